"""tf_remoting: the GPU-host side of tf-jupyter (the remoting runtime) and its client.

Which code runs where, by folder:

- `worker/`   the worker daemon on a GPU host (gRPC server, ledger, kernel nannies, telemetry);
- `devices/`  the worker's device backends (NVML, or the host's CPU/RAM);
- `client/`   the client library the Jupyter side uses (runs on the Jupyter host);
- `kernel/`   code that runs inside the user's kernel process (soft caps, `%vgpu`);
- `_proto/`   the generated protocol (never edited by hand).

The top-level modules are shared by all of them: `proto` (the generated messages under short
names), `framing` (Jupyter frames over the Channels stream), `slice_env` (the slice's
environment, written by the worker and read inside the kernel), `quantities` and `paths`.
The Jupyter side uses only `proto`, `client` and `quantities`; it never imports `worker`.
"""

__version__ = "0.1.0"
