"""tf_jupyter: the Jupyter-host side of tf-jupyter (pool view, placement, provisioner, API).

The Jupyter side talks to GPU hosts only through the remoting protocol and its thin client.
"""

__version__ = "0.1.0"
