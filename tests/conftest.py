pytest_plugins = ["tf_remoting.pytest_plugin", "tf_jupyter.pytest_plugin"]
