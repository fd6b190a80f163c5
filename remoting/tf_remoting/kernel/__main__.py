"""Kernel entry point used by the worker: apply the slice's caps, then run ipykernel with %vgpu.

    python -m tf_remoting.kernel -f CONNECTION_FILE
"""

import sys

from tf_remoting.kernel.caps import install_caps


def history_args(argv: list[str]) -> list[str]:
    """IPython's command history kept in the kernel's memory, not in the shared ~/.ipython.

    Every kernel of a worker runs as the same user, so by default all of them write one
    ~/.ipython/profile_default/history.sqlite: with tens of kernels running cells at once, SQLite's
    lock made IPython's history thread print "database is locked" into users' cell output, and
    `%history -g` showed one user the code of another. In memory, each kernel's history has one
    writer and no file: no lock is ever contended, nothing is seen across kernels, and a full disk
    on the worker cannot break it (a file in the kernel's directory did, on a full state disk).
    `%history` works within the kernel's life, which is all a per-kernel file offered too (a new
    kernel gets a new directory). History per principal, across kernels, is a later feature.
    """
    if any(arg.startswith("--HistoryManager.hist_file") for arg in argv):
        return []  # the client chose (nbclient asks for :memory:): a second value is an error to traitlets
    return ["--HistoryManager.hist_file=:memory:"]


def main() -> None:
    install_caps()
    from ipykernel.kernelapp import launch_new_instance

    args = sys.argv[1:]
    launch_new_instance(argv=[*args, *history_args(args), "--ext=tf_remoting.kernel.magic"])


if __name__ == "__main__":
    main()
