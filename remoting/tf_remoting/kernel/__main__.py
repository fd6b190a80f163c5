"""Kernel entry point used by the worker: apply the slice's caps, then run ipykernel with %vgpu.

    python -m tf_remoting.kernel -f CONNECTION_FILE
"""

import sys

from tf_remoting.kernel.caps import install_caps


def main() -> None:
    install_caps()
    from ipykernel.kernelapp import launch_new_instance

    launch_new_instance(argv=[*sys.argv[1:], "--ext=tf_remoting.kernel.magic"])


if __name__ == "__main__":
    main()
