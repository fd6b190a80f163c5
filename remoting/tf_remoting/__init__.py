"""tf_remoting: the GPU-host side of tf-jupyter (the remoting runtime, "worker").

It knows devices, leases and kernel processes, and never knows JupyterLab. The Jupyter side uses
only the protocol (`tf_remoting.proto`), the thin client (`tf_remoting.client`) and the shared
quantity parser (`tf_remoting.quantities`).
"""

__version__ = "0.1.0"
