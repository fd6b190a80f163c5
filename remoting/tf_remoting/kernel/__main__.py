"""Kernel entry point used by the worker: apply the slice's caps, then run ipykernel with %vgpu.

    python -m tf_remoting.kernel -f CONNECTION_FILE
"""

import os
import sys

from tf_remoting.kernel.caps import install_caps

HISTORY_FILE = "history.sqlite"


def connection_file(argv: list[str]) -> str | None:
    """The -f / --f / --ConnectionFileMixin.connection_file argument, if given."""
    for i, arg in enumerate(argv):
        if arg in ("-f", "--f") and i + 1 < len(argv):
            return argv[i + 1]
        for prefix in ("-f=", "--f=", "--ConnectionFileMixin.connection_file=", "--IPKernelApp.connection_file="):
            if arg.startswith(prefix):
                return arg[len(prefix):]
    return None


def history_args(argv: list[str]) -> list[str]:
    """IPython's command history in the kernel's own directory, not in the shared ~/.ipython.

    Every kernel of a worker runs as the same user, so by default all of them write one
    ~/.ipython/profile_default/history.sqlite: with tens of kernels running cells at once, SQLite's
    lock made IPython's history thread print "database is locked" into users' cell output, and
    `%history -g` showed one user the code of another. The kernel's directory
    (STATE/kernels/<id>/, owner-only, where the worker writes the connection file) belongs to this
    kernel alone: its history there has one writer, so no lock is ever contended, and it stays
    private to the kernel (history per principal, across kernels, is a later feature). Where there
    is no such directory (run by hand), history stays in memory rather than in a shared file.
    """
    if any(arg.startswith("--HistoryManager.hist_file") for arg in argv):
        return []  # the client chose (nbclient asks for :memory:): a second value is an error to traitlets
    conn = connection_file(argv)
    directory = os.path.dirname(os.path.abspath(conn)) if conn else ""
    if directory and os.path.isdir(directory) and os.access(directory, os.W_OK):
        hist = os.path.join(directory, HISTORY_FILE)
    else:
        hist = ":memory:"
    return [f"--HistoryManager.hist_file={hist}"]


def main() -> None:
    install_caps()
    from ipykernel.kernelapp import launch_new_instance

    args = sys.argv[1:]
    launch_new_instance(argv=[*args, *history_args(args), "--ext=tf_remoting.kernel.magic"])


if __name__ == "__main__":
    main()
