"""`%vgpu`: the slice this kernel runs in, from inside the notebook.

Loaded by the kernel entry point (`--ext tf_remoting.kernel.magic`). The slice comes from the
kernel's environment (`SliceEnv.from_env()`, written by the worker); it talks to the worker at the
slice's `worker` address (a local unix socket) with the kernel's own lease-scoped token, using the
synchronous gRPC API (the kernel runs its own event loop). grpc is imported on first use, so
loading the extension keeps kernel start fast. Arguments are parsed by IPython's
`magic_arguments` (argparse): `%vgpu?` shows the same commands as `%vgpu help`.
"""

from __future__ import annotations

import argparse
import html
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, kwds, magic_arguments
from IPython.utils.process import arg_split

from tf_remoting.quantities import QuantityError, format_bytes, parse_bytes, parse_percent, utilization_text
from tf_remoting.slice_env import NotInSlice, SliceEnv

HELP = """%vgpu — this kernel's vGPU slice

  %vgpu                          same as %vgpu status
  %vgpu status                   device, slice, isolation mode, VRAM used / limit, utilization,
                                 and your quota on this worker with what you hold against it
  %vgpu watch [SECONDS]          live VRAM and utilization in one output, updated every sample
                                 (default 10 s, at most 3600 s; interrupt the kernel to stop early)
  %vgpu resize [--vram SIZE] [--compute PERCENT]
                                 ask the worker for a bigger or smaller slice on the same device,
                                 e.g. --vram 8Gi --compute 50; on success the in-kernel caps
                                 (PyTorch, CuPy) follow. A flag left out keeps its current value.
                                 Exclusive (whole-device) slices cannot be resized; growing past
                                 your quota is refused with the quota, what you hold and asked.
  %vgpu push LOCAL [REMOTE]      copy a file from the notebook's directory to the kernel's
  %vgpu pull [--overwrite] REMOTE [LOCAL]
                                 copy a file from the kernel's directory to the notebook's; a
                                 file that exists there is replaced only with --overwrite
                                 Paths are relative to each directory (up to 2 GiB a file), with
                                 no '..' and no symbolic links on the way. The kernel's Jupyter
                                 side does the copy. When the kernel shares the notebook's
                                 filesystem there is nothing to move.
  %vgpu help                     this text

Sizes: 4Gi, 512Mi, 1.5Gi (binary) or 4G (decimal). Percentages: 50 or 50%.
"""

COMMANDS = ("status", "watch", "resize", "push", "pull", "help")
WATCH_DEFAULT = 10.0
WATCH_MAX = 3600.0
WATCH_OUTAGE = 30.0  # seconds %vgpu watch waits for its worker to come back
RPC_TIMEOUT = 5.0
TRANSFER_TIMEOUT = 600.0


def _fail(message: str) -> UsageError:
    # IPython shows a UsageError as one short line, without a traceback.
    return UsageError(message)


# ---------------------------------------------------------------------------- worker access


def _slice() -> SliceEnv:
    """This kernel's slice, as the worker wrote it into the environment (and resizes updated it)."""
    try:
        return SliceEnv.from_env()
    except NotInSlice as exc:
        raise _fail(f"%vgpu: {exc}") from None


@contextmanager
def _stub() -> Iterator[tuple[Any, tuple[tuple[str, str], ...]]]:
    """(RuntimeStub, call metadata) for this kernel's worker; the channel closes afterwards."""
    slice_ = _slice()
    if not slice_.worker or not slice_.token:
        raise _fail("%vgpu: this kernel does not know its worker: its slice environment has no worker "
                    "address or token; restart the kernel")
    import grpc

    from tf_remoting.proto import pb_grpc

    channel = grpc.insecure_channel(slice_.worker)  # the worker's local unix socket for kernels
    try:
        yield pb_grpc.RuntimeStub(channel), (("authorization", f"Bearer {slice_.token}"),)
    finally:
        channel.close()


def _rpc_failure(what: str, exc: Any) -> UsageError:
    """A readable error from a grpc.RpcError: the worker's own sentence, and its status."""
    import grpc

    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return _fail(f"%vgpu {what}: the worker at {_slice().worker} is not reachable ({details})")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return _fail(f"%vgpu {what}: the worker has no room: {details}")
    if code == grpc.StatusCode.FAILED_PRECONDITION:  # over quota, an exclusive lease: the sentence says it
        return _fail(f"%vgpu {what}: {details}")
    return _fail(f"%vgpu {what}: the worker refused ({code.name}): {details}")


def _live_lease() -> Any | None:
    """This kernel's lease as the worker sees it now, or None when the worker is not reachable."""
    import grpc

    from tf_remoting.proto import pb

    try:
        lease_id = _slice().lease_id
        with _stub() as (stub, metadata):
            leases = stub.ListLeases(pb.ListLeasesRequest(), metadata=metadata, timeout=RPC_TIMEOUT).leases
    except (grpc.RpcError, UsageError):
        return None
    return next((lease for lease in leases if lease.id == lease_id), None)


def _live_quota() -> Any | None:
    """The kernel's principal's quota on this worker and what it holds (pb.QuotaStatus), or None
    when the worker is not reachable."""
    import grpc

    from tf_remoting.proto import pb

    try:
        with _stub() as (stub, metadata):
            inventory = stub.GetInventory(pb.GetInventoryRequest(), metadata=metadata, timeout=RPC_TIMEOUT)
    except (grpc.RpcError, UsageError):
        return None
    return inventory.quota if inventory.HasField("quota") else None


def quota_text(status: Any) -> str:
    """'VRAM 2 GiB of 3 GiB, compute 20 % (no limit), ...' from a pb.QuotaStatus."""
    quota, held = status.quota, status.held
    parts = []
    for name, label, show in (("vram", "VRAM", format_bytes), ("compute", "compute", lambda v: f"{v} %"),
                              ("kernels", "kernels", str), ("devices", "whole devices", str)):
        used = show(getattr(held, name))
        limit = f"of {show(getattr(quota, name))}" if quota.HasField(name) else "(no limit)"
        parts.append(f"{label} {used} {limit}")
    source = f"; set by {status.source}" if status.source else "; no quota is configured"
    return ", ".join(parts) + source


def _live_usage() -> tuple[int | None, float | None]:
    """(VRAM used, utilization) of this kernel's lease from the worker, or (None, None)."""
    lease = _live_lease()
    if lease is None:
        return None, None
    return sum(s.vram_used for s in lease.slices), max((s.utilization for s in lease.slices), default=0.0)


# ---------------------------------------------------------------------------- rendering


def _percent_of(used: int, limit: int) -> int:
    return round(100 * used / limit) if limit > 0 else 0


def vram_text(used: int | None, limit: int) -> str:
    """'512 MiB of 4 GiB (12 %)'."""
    if used is None:
        return f"unknown (worker not reachable) of {format_bytes(limit)}"
    return f"{format_bytes(used)} of {format_bytes(limit)} ({_percent_of(used, limit)} %)"


def text_bar(used: int | None, limit: int, width: int = 20) -> str:
    """'[####----------------]': the VRAM bar in plain characters."""
    if used is None or limit <= 0:
        return "[" + "?" * width + "]"
    filled = min(width, round(width * used / limit))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _meter_html(used: int | None, limit: int) -> str:
    """An HTML meter with the same words next to it: nothing is said by colour alone."""
    words = html.escape(vram_text(used, limit))
    if used is None or limit <= 0:
        return words
    value = min(used, limit)
    return (f"<meter min='0' max='{limit}' value='{value}' high='{int(limit * 0.9)}' "
            f"aria-label='VRAM used: {words}'>{words}</meter> {words}")


def _table_html(caption: str, rows: list[tuple[str, str]], css_class: str,
                raw: dict[str, str] | None = None) -> str:
    """An accessible table: caption, row headers, text in every cell."""
    cells = []
    for key, value in rows:
        content = (raw or {}).get(key, html.escape(value))
        cells.append(f"<tr><th scope='row' style='text-align:left'>{html.escape(key)}</th>"
                     f"<td style='text-align:left'>{content}</td></tr>")
    return (f"<table class='{css_class}'><caption style='text-align:left'>{html.escape(caption)}</caption>"
            f"<tbody>{''.join(cells)}</tbody></table>")


@dataclass
class SliceStatus:
    device: str
    device_kind: str
    lease_id: str
    mode: str
    enforcement: str
    vram_limit: int
    compute: int
    vram_used: int | None
    utilization: float | None
    shares_filesystem: bool
    cwd: str
    note: str = ""
    quota: str = ""  # quota_text of the kernel's principal on this worker ("" when unknown)

    def rows(self) -> list[tuple[str, str]]:
        util = ("unknown" if self.utilization is None
                else utilization_text(self.utilization, self.compute, self.device_kind == "host"))
        kind = "host device (no GPU)" if self.device_kind == "host" else "GPU"
        files = ("shared with the notebook" if self.shares_filesystem
                 else "on the worker, not the notebook's host")
        rows = [
            ("device", f"{self.device} [{kind}]"),
            ("slice", f"{format_bytes(self.vram_limit)} VRAM, {self.compute} % compute"),
            ("isolation", f"{self.mode} (memory enforced by {self.enforcement})"),
            ("VRAM used", f"{text_bar(self.vram_used, self.vram_limit)} "
                          f"{vram_text(self.vram_used, self.vram_limit)}"),
            ("utilization", util),
            ("lease", self.lease_id),
            ("files", f"{files}: {self.cwd}"),
        ]
        if self.quota:
            rows.append(("quota (this worker)", self.quota))
        if self.note:
            rows.append(("note", self.note))
        return rows

    def __repr__(self) -> str:
        width = max(len(k) for k, _ in self.rows())
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in self.rows())

    def _repr_html_(self) -> str:
        return _table_html("vGPU slice of this kernel", self.rows(), "tf-vgpu-status",
                           {"VRAM used": _meter_html(self.vram_used, self.vram_limit)})


def _sync_limits(vram: int, compute: int) -> list[str]:
    """Put new limits into this process's environment and make the frameworks follow."""
    from tf_remoting.kernel.caps import reapply_caps

    os.environ.update(_slice().resized(vram, compute).to_env())
    return reapply_caps()


def status() -> SliceStatus:
    slice_ = _slice()
    vram_limit, compute = slice_.vram_limit, slice_.compute_limit
    used: int | None = None
    util: float | None = None
    note = ""
    lease = _live_lease()
    if lease is not None and lease.slices:
        used = sum(s.vram_used for s in lease.slices)
        util = max(s.utilization for s in lease.slices)
        live_vram, live_compute = lease.slices[0].vram, lease.slices[0].compute
        if (live_vram, live_compute) != (vram_limit, compute):
            # Resized from outside the kernel (e.g. the Jupyter API): the worker is the truth.
            _sync_limits(live_vram, live_compute)
            note = (f"the slice was resized outside this kernel (was {format_bytes(vram_limit)} / {compute} %); "
                    "the in-kernel caps now follow")
            vram_limit, compute = live_vram, live_compute
    quota = _live_quota() if lease is not None else None
    return SliceStatus(
        quota=quota_text(quota) if quota is not None else "",
        device=slice_.device_name, device_kind=slice_.device_kind, lease_id=slice_.lease_id, mode=slice_.mode,
        enforcement=slice_.memory_enforcement, vram_limit=vram_limit, compute=compute,
        vram_used=used, utilization=util, shares_filesystem=slice_.shares_filesystem,
        cwd=os.getcwd(), note=note)


# ---------------------------------------------------------------------------- watch


@dataclass
class WatchView:
    """What `%vgpu watch` shows; re-rendered on every sample through one display id."""

    lease_id: str
    seconds: float
    host: bool = False  # the host device (no GPU): utilization is of the host
    started: float = field(default_factory=time.monotonic)
    samples: int = 0
    vram_used: int | None = None
    vram_limit: int = 0
    utilization: float | None = None
    peak_vram: int = 0
    compute: int = 0
    events: list[str] = field(default_factory=list)
    state: str = "watching"  # then "finished", "stopped" or an error sentence

    def add(self, samples: list[Any]) -> None:
        self.samples += 1
        self.vram_used = sum(s.vram_used for s in samples)
        self.vram_limit = samples[0].vram_limit
        self.compute = samples[0].compute_limit
        self.utilization = max(s.utilization for s in samples)
        self.peak_vram = max(self.peak_vram, self.vram_used)

    def rows(self) -> list[tuple[str, str]]:
        elapsed = time.monotonic() - self.started
        if self.state == "watching":
            state = f"watching: {elapsed:.0f} s of {self.seconds:g} s"
        elif self.state == "finished":
            state = f"finished after {self.seconds:g} s"
        elif self.state == "stopped":
            state = f"stopped after {elapsed:.0f} s"
        else:
            state = self.state
        util = ("no sample yet" if self.utilization is None
                else utilization_text(self.utilization, self.compute, self.host))
        rows = [
            ("VRAM used", "no sample yet" if self.vram_used is None else
             f"{text_bar(self.vram_used, self.vram_limit)} {vram_text(self.vram_used, self.vram_limit)}"),
            ("peak VRAM", "no sample yet" if self.vram_used is None else format_bytes(self.peak_vram)),
            ("utilization", util),
            ("compute limit", f"{self.compute} %" if self.vram_used is not None else "no sample yet"),
            ("samples", str(self.samples)),
            ("watch", state),
        ]
        if self.events:
            rows.append(("last event", self.events[-1]))
        return rows

    def __repr__(self) -> str:
        width = max(len(k) for k, _ in self.rows())
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in self.rows())

    def _repr_html_(self) -> str:
        raw = {}
        if self.vram_used is not None:
            raw["VRAM used"] = _meter_html(self.vram_used, self.vram_limit)
        return _table_html(f"vGPU watch of lease {self.lease_id}", self.rows(), "tf-vgpu-watch", raw)


def watch(seconds: float) -> None:
    """Show the lease's samples for `seconds`. A worker restart or a short network outage only
    pauses the watch: it reconnects (client.backoff) until the end, or gives up after
    WATCH_OUTAGE seconds without the worker."""
    import grpc
    from IPython.display import display

    from tf_remoting.client.backoff import Backoff
    from tf_remoting.proto import pb

    slice_ = _slice()
    lease_id = slice_.lease_id
    view = WatchView(lease_id=lease_id, seconds=seconds, host=slice_.device_kind == "host")
    deadline = time.monotonic() + seconds
    backoff = Backoff(initial=0.25, factor=2.0, max_delay=2.0, give_up_after=WATCH_OUTAGE)
    error: UsageError | None = None
    handle: Any = display(view, display_id=True)
    try:
        while view.state == "watching":
            left = deadline - time.monotonic()
            if left <= 0:
                view.state = "finished"
                break
            try:
                with _stub() as (stub, metadata):
                    # The deadline ends the stream at the watch's end; the kernel token only sees its own lease.
                    call = stub.Watch(pb.WatchRequest(), metadata=metadata, timeout=left)
                    try:
                        for response in call:
                            if backoff.failures:
                                view.events.append("the worker is reachable again: watching resumed")
                            backoff.succeeded()
                            samples = [s for s in response.leases if s.lease_id == lease_id]
                            events = [e for e in response.events if e.lease_id in ("", lease_id)]
                            if samples:
                                view.add(samples)
                            view.events.extend(e.message for e in events)
                            if samples or events:
                                handle.update(view)
                    except KeyboardInterrupt:
                        call.cancel()
                        raise
                if time.monotonic() >= deadline:
                    view.state = "finished"
                    break
                reason = "the worker ended the stream"
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    view.state = "finished"
                    break
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    error = _rpc_failure("watch", exc)
                    view.state = f"ended: {error}"
                    break
                reason = exc.details() or "unavailable"
            # Interrupted before the end: reconnect after a pause, unless the worker stays away.
            if backoff.failed():
                view.events.append(f"the worker is not reachable ({reason}): reconnecting")
                handle.update(view)
            if backoff.exhausted():
                error = _fail(f"%vgpu watch: the worker at {_slice().worker} has not been reachable for "
                              f"{backoff.outage():.0f} s ({reason}); try again when it is back")
                view.state = f"ended: {error}"
                break
            time.sleep(max(0.0, min(backoff.next_delay(), deadline - time.monotonic())))
    except KeyboardInterrupt:
        view.state = "stopped"
    handle.update(view)
    if error is not None:
        raise error


# ---------------------------------------------------------------------------- resize


def resize(vram: int | None, compute: int | None) -> None:
    """Ask the worker for a new slice size; a value left None keeps the worker's current one."""
    import grpc

    from tf_remoting.proto import pb

    if vram is None and compute is None:
        raise _fail("%vgpu resize: say what to change: --vram SIZE (e.g. 8Gi) and/or --compute PERCENT (e.g. 50)")
    slice_ = _slice()
    lease_id = slice_.lease_id
    old_vram, old_compute = slice_.vram_limit, slice_.compute_limit
    live = _live_lease()
    if live is not None and live.slices:  # a flag left out keeps the worker's current value
        old_vram, old_compute = live.slices[0].vram, live.slices[0].compute
    # Only the dimensions asked: the worker keeps the other as it is then, so a concurrent resize of
    # it (from the Jupyter side) is not undone by a value read here a moment ago.
    request = pb.ResizeRequest(lease_id=lease_id)
    if vram is not None:
        request.vram = vram
    if compute is not None:
        request.compute = compute
    try:
        with _stub() as (stub, metadata):
            lease = stub.Resize(request, metadata=metadata, timeout=RPC_TIMEOUT)
    except grpc.RpcError as exc:
        raise _rpc_failure("resize", exc) from None
    got_vram, got_compute = lease.slices[0].vram, lease.slices[0].compute
    notes = _sync_limits(got_vram, got_compute)
    changes = []
    if got_vram != old_vram:
        changes.append(f"VRAM {format_bytes(old_vram)} -> {format_bytes(got_vram)}")
    if got_compute != old_compute:
        changes.append(f"compute {old_compute} % -> {got_compute} %")
    if changes:
        print(f"Resized lease {lease_id}: {', '.join(changes)}.")
    else:
        print(f"Lease {lease_id} already has {format_bytes(got_vram)} VRAM, {got_compute} % compute; nothing changed.")
    for note in notes:
        print(f"  {note}")


# ---------------------------------------------------------------------------- push / pull


def transfer(command: str, args: Sequence[str], overwrite: bool = False) -> None:
    source, target = ("LOCAL", "REMOTE") if command == "push" else ("REMOTE", "LOCAL")
    if not 1 <= len(args) <= 2:
        raise _fail(f"%vgpu {command} takes {source} [{target}]; see %vgpu help")
    slice_ = _slice()
    cwd = os.getcwd()
    if slice_.shares_filesystem:
        where = os.path.join(cwd, args[0])
        state = "it is there" if os.path.exists(where) else "it is not there"
        print(f"Nothing to move: this kernel shares the notebook's filesystem and runs in {cwd}, so "
              f"{args[0]!r} is the same file on both sides ({state}).")
        return
    import grpc

    from tf_remoting.proto import pb

    first, second = args[0], args[-1] if len(args) == 2 else os.path.basename(args[0].rstrip("/"))
    client_path, kernel_path = (first, second) if command == "push" else (second, first)
    direction = pb.TRANSFER_TO_KERNEL if command == "push" else pb.TRANSFER_FROM_KERNEL
    request = pb.TransferRequest(kernel_id=slice_.kernel_id, direction=direction, client_path=client_path,
                                 kernel_path=kernel_path, timeout_seconds=int(TRANSFER_TIMEOUT),
                                 overwrite=overwrite)
    try:
        with _stub() as (stub, metadata):
            result = stub.RequestTransfer(request, metadata=metadata, timeout=TRANSFER_TIMEOUT + 10)
    except grpc.RpcError as exc:
        raise _rpc_failure(command, exc) from None
    if not result.ok:
        raise _fail(f"%vgpu {command}: {result.message}")
    print(result.message[:1].upper() + result.message[1:] + ".")


# ---------------------------------------------------------------------------- the magic


def _watch_seconds(args: Sequence[str]) -> float:
    if len(args) > 1:
        raise _fail("%vgpu watch takes at most one argument: SECONDS")
    if not args:
        return WATCH_DEFAULT
    text = args[0].removesuffix("s")
    try:
        seconds = float(text)
    except ValueError:
        raise _fail(f"%vgpu watch: {args[0]!r} is not a number of seconds, e.g. %vgpu watch 30") from None
    if not 0 < seconds <= WATCH_MAX:
        raise _fail(f"%vgpu watch: SECONDS must be more than 0 and at most {WATCH_MAX:g}, not {args[0]}")
    return seconds


def _vram(text: str) -> int:
    """argparse type of --vram: a size above 0, in bytes."""
    try:
        vram = parse_bytes(text)
    except QuantityError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if vram <= 0:
        raise argparse.ArgumentTypeError(f"invalid memory quantity {text!r}: it must be more than 0")
    return vram


def _compute(text: str) -> int:
    """argparse type of --compute: a percentage of the device."""
    try:
        return parse_percent(text)
    except QuantityError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Once(argparse.Action):
    """Store an option's value, refusing a second one (argparse would keep the last silently)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        if getattr(namespace, self.dest) is not None:
            raise argparse.ArgumentError(self, "given twice; say it once")
        setattr(namespace, self.dest, values)


@magic_arguments()
@kwds(description=HELP, epilog="")
@argument("command", nargs="?", default="status", metavar="COMMAND",
          help=f"one of {', '.join(COMMANDS)} (default: status)")
@argument("args", nargs="*", metavar="ARG", help="watch: SECONDS; push: LOCAL [REMOTE]; pull: REMOTE [LOCAL]")
@argument("--vram", type=_vram, action=_Once, metavar="SIZE", help="resize: VRAM of the slice, e.g. 8Gi")
@argument("--compute", type=_compute, action=_Once, metavar="PERCENT",
          help="resize: compute share of the device, e.g. 50")
@argument("--overwrite", action="store_true",
          help="pull: replace a file that exists in the notebook's directory")
@argument("-h", "--help", action="store_true", help="same as %%vgpu help")
def vgpu(line: str) -> Any:
    """This kernel's vGPU slice (see %vgpu help)."""
    try:
        # Intermixed: options may come between the positionals (%vgpu pull --overwrite a.bin).
        parsed = vgpu.parser.parse_intermixed_args(arg_split(line, strict=True))
    except ValueError as exc:  # unbalanced quotes
        raise _fail(f"%vgpu: {exc}") from None
    except UsageError as exc:  # argparse's own sentence, e.g. "argument --vram: expected one argument"
        raise _fail(f"%vgpu: {exc}; see %vgpu help") from None
    command, args = parsed.command, parsed.args
    if parsed.help or command == "help":
        print(HELP)
        return None
    if command not in COMMANDS:
        raise _fail(f"unknown %vgpu command {command!r}; the commands are {', '.join(COMMANDS)} (see %vgpu help)")
    if command != "resize" and (parsed.vram is not None or parsed.compute is not None):
        raise _fail(f"%vgpu {command}: --vram and --compute belong to %vgpu resize")
    if command != "pull" and parsed.overwrite:
        raise _fail(f"%vgpu {command}: --overwrite belongs to %vgpu pull (a push always replaces the "
                    "kernel's copy)")
    if command == "status":
        if args:
            raise _fail("%vgpu status takes no arguments")
        return status()
    if command == "watch":
        watch(_watch_seconds(args))
        return None
    if command == "resize":
        if args:
            raise _fail(f"%vgpu resize: unexpected {' '.join(args)!r}; use --vram SIZE and/or --compute PERCENT")
        resize(parsed.vram, parsed.compute)
        return None
    transfer(command, args, parsed.overwrite)  # push or pull
    return None


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magic_function(vgpu, magic_kind="line", magic_name="vgpu")
