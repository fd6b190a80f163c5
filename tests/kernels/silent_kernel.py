"""A minimal Jupyter kernel that never greets: a plain PUB iopub socket, no `iopub_welcome`.

Older ipykernels and many other-language kernels behave like this. It answers
`kernel_info_request` on shell (with busy/idle status on iopub) and nothing else, which is enough
to test how the nanny treats a kernel whose first iopub message only comes when it is asked.
Run as `python silent_kernel.py CONNECTION_FILE`.
"""

from __future__ import annotations

import json
import sys

import zmq
from jupyter_client.session import Session


def main() -> None:
    info = json.loads(open(sys.argv[1]).read())
    session = Session(key=info["key"].encode(), signature_scheme=info["signature_scheme"])
    ctx = zmq.Context()
    if info.get("transport", "tcp") == "ipc":  # how the worker's nanny connects to kernels
        url = f"ipc://{info['ip']}-"
    else:
        url = f"tcp://{info['ip']}:"
    shell = ctx.socket(zmq.ROUTER)
    shell.bind(url + str(info["shell_port"]))
    iopub = ctx.socket(zmq.PUB)
    iopub.bind(url + str(info["iopub_port"]))
    others = []
    for name in ("control_port", "stdin_port", "hb_port"):
        sock = ctx.socket(zmq.ROUTER)
        sock.bind(url + str(info[name]))
        others.append(sock)
    while True:
        idents, msg = session.recv(shell, mode=0)
        if msg is None or msg["header"]["msg_type"] != "kernel_info_request":
            continue
        session.send(iopub, "status", {"execution_state": "busy"}, parent=msg)
        session.send(shell, "kernel_info_reply",
                     {"status": "ok", "protocol_version": "5.3", "implementation": "silent",
                      "implementation_version": "0", "language_info": {"name": "none"}, "banner": ""},
                     parent=msg, ident=idents)
        session.send(iopub, "status", {"execution_state": "idle"}, parent=msg)


if __name__ == "__main__":
    main()
