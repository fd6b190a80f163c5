"""tf_jupyter: the Jupyter-host side of tf-jupyter (pool view, placement, provisioner, API).

The Jupyter side talks to GPU hosts only through the remoting protocol and its thin client.
"""

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, object]]:
    from tf_jupyter.app import TfVgpuApp

    return [{"module": "tf_jupyter", "app": TfVgpuApp}]
