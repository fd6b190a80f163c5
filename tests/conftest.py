pytest_plugins = ["tf_remoting.pytest_plugin"]
