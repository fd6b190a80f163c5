"""Defect 2: the nanny's poll loop and ZMQ errors (pyzmq 27 has no zmq.EINTR).

Each case runs a real Nanny (real zmq context, poller and sockets, a real kernel process that
exits at once) in a subprocess: the nanny reaps with waitpid(-1) and kills its descendants, which
must not happen to pytest's own children.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = r'''
import errno, os, subprocess, sys, tempfile, threading, time
from pathlib import Path

import zmq

from tf_remoting.worker import nanny_loop
from tf_remoting.worker.nanny import listen

case = sys.argv[1]
d = Path(tempfile.mkdtemp())
kernel = subprocess.Popen([sys.executable, "-c", "pass"])
spec = {"socket": str(d / "n.sock"), "kernel_id": "k"}
connection = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5,
              "ip": str(d / "k"), "transport": "ipc"}
nanny = nanny_loop.Nanny(d, spec, kernel, connection)


class Interrupted(zmq.Poller):
    """A poll cut short by a signal, as libzmq reports it (errno EINTR), on the first call."""
    calls = 0

    def poll(self, timeout=None):
        Interrupted.calls += 1
        if Interrupted.calls == 1:
            raise zmq.ZMQError(errno.EINTR)
        return super().poll(timeout)


if case == "eintr":
    nanny.poller = Interrupted()
nanny.start(listen(spec["socket"]))
if case == "terminated":  # a real ZMQError (ETERM) from poll: the context terminated under it
    threading.Thread(target=nanny.ctx.term, daemon=True).start()
    time.sleep(0.2)
nanny.stopping = True  # exit as soon as the kernel has
try:
    code = nanny.run()
except zmq.ZMQError as exc:
    name = "ETERM" if exc.errno == zmq.ETERM else errno.errorcode.get(exc.errno, exc.errno)
    print("raised ZMQError", name, flush=True)
    os._exit(3)  # the terminating thread waits for sockets nobody will close
print("ran to the end", code, nanny.exit_code, Interrupted.calls, flush=True)
'''


def run_case(case: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "nanny_case.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, str(script), case], capture_output=True, text=True, timeout=60)


def test_a_poll_interrupted_by_a_signal_is_one_empty_turn(tmp_path: Path) -> None:
    done = run_case("eintr", tmp_path)
    assert done.returncode == 0, done.stderr
    ran, code, exit_code, polls = done.stdout.split()[-4:]
    assert (code, exit_code) == ("0", "0")  # went on to see the kernel exit and ended normally
    assert int(polls) > 1


def test_any_other_zmq_error_from_poll_is_raised_as_itself(tmp_path: Path) -> None:
    done = run_case("terminated", tmp_path)
    assert "AttributeError" not in done.stderr, done.stderr  # was: module 'zmq' has no attribute 'EINTR'
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "raised ZMQError ETERM" in done.stdout


def test_nanny_and_its_loop_do_not_import_each_other() -> None:
    """The nanny starts the kernel on the standard library alone; the loop needs nothing of the nanny's."""
    heavy = ('zmq', 'google.protobuf', 'tf_remoting.worker.nanny_loop')
    probe = f"import sys\nimport tf_remoting.worker.nanny\nprint(sorted(m for m in {heavy} if m in sys.modules))\n"
    fresh = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.split("\n")[0] == "[]", fresh.stdout  # nothing heavy before the kernel starts
    alone = subprocess.run([sys.executable, "-c", "import sys\nimport tf_remoting.worker.nanny_loop\n"
                            "print('tf_remoting.worker.nanny' in sys.modules)"],
                           capture_output=True, text=True, timeout=60)
    assert alone.stdout.strip() == "False", (alone.stdout, alone.stderr)
