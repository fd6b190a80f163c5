"""Files through the worker (GetFile / PutFile) stay inside the kernel's working directory even when
a directory on the way is swapped for a symlink while they run, and the file-system identity switch
they use with tenant uids works (a file op run as another uid has that uid's rights and owns what
it creates)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tf_remoting import paths
from tf_remoting.client import PermissionDenied, RemotingError
from tf_remoting.client.session import start_remote_kernel
from tf_remoting.proto import pb

MiB = 1 << 20
CALL_TIMEOUT = 10.0
RACE_SECONDS = 4.0
OUTSIDE_SECRET = b"OUTSIDE-SECRET " + secrets.token_hex(8).encode()


class Swapper(threading.Thread):
    """Swaps `cwd/d` between a real directory and a symlink to `outside`, as fast as it can."""

    def __init__(self, cwd: Path, outside: Path) -> None:
        super().__init__(daemon=True)
        self.cwd, self.outside = cwd, outside
        self.stop = threading.Event()
        self.swaps = 0

    def run(self) -> None:
        d, real = self.cwd / "d", self.cwd / "d.real"
        while not self.stop.is_set():
            with contextlib.suppress(OSError):
                os.rename(d, real)
            with contextlib.suppress(OSError):
                os.symlink(self.outside, d)
                self.swaps += 1
            time.sleep(0)
            with contextlib.suppress(OSError):
                os.unlink(d)
            if d.is_dir() and not d.is_symlink():  # the worker made a fresh one meanwhile (PutFile)
                shutil.rmtree(d, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.rename(real, d)


def snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.stat().st_size, p.read_bytes())
            for p in sorted(directory.rglob("*")) if p.is_file()}


async def test_symlink_swap_race_reads_and_writes_nothing_outside(tf_worker_factory, tmp_path):
    worker = tf_worker_factory(["--host-vram", "2Gi", "--no-shares-filesystem"]).start()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(OUTSIDE_SECRET)
    before = snapshot(outside)
    async with worker.client() as client:
        lease = await client.allocate(vram=64 * MiB, compute=1, ttl_seconds=600)
        kernel = await client.start_kernel(lease.id, key=secrets.token_hex(16).encode())
        cwd = Path(kernel.cwd)
        assert cwd != tmp_path and outside not in cwd.parents
        (cwd / "d").mkdir()
        (cwd / "d" / "secret.txt").write_bytes(b"inside")
        leaked: list[str] = []
        counts = {"get": 0, "put": 0, "refused": 0}
        swapper = Swapper(cwd, outside)

        async def reader() -> None:
            while time.monotonic() < deadline:
                try:
                    data = await asyncio.wait_for(client.get_file(kernel.id, "d/secret.txt"), CALL_TIMEOUT)
                except RemotingError:
                    counts["refused"] += 1
                    continue
                counts["get"] += 1
                if data != b"inside":
                    leaked.append(f"read {data[:40]!r}")

        async def writer(n: int) -> None:
            i = 0
            while time.monotonic() < deadline:
                i += 1
                try:
                    await asyncio.wait_for(client.put_file(kernel.id, f"d/planted-{n}-{i}.txt", b"x"), CALL_TIMEOUT)
                    counts["put"] += 1
                except RemotingError:
                    counts["refused"] += 1

        swapper.start()
        try:
            deadline = time.monotonic() + RACE_SECONDS
            await asyncio.gather(reader(), reader(), writer(1), writer(2))
        finally:
            swapper.stop.set()
            swapper.join(timeout=10)
        await client.release(lease.id)
    assert swapper.swaps > 10, "the swapper never ran; the race was not tried"
    assert counts["get"] and counts["put"] and counts["refused"], counts  # both sides of the race happened
    after = snapshot(outside)
    touched = {k for k, v in after.items() if before.get(k) != v} | (set(before) - set(after))
    assert not leaked and not touched, (f"{len(leaked)} reads got a file outside the kernel's directory "
                                        f"({leaked[:2]}), {len(touched)} files outside were written "
                                        f"({sorted(touched)[:3]}); {counts}")


async def test_symlinks_inside_are_refused_with_a_sentence(tf_worker_factory, tmp_path):
    worker = tf_worker_factory(["--host-vram", "2Gi", "--no-shares-filesystem"]).start()
    async with worker.client() as client:
        lease = await client.allocate(vram=64 * MiB, compute=1, ttl_seconds=600)
        kernel = await client.start_kernel(lease.id, key=secrets.token_hex(16).encode())
        cwd = Path(kernel.cwd)
        (cwd / "real").mkdir()
        (cwd / "real" / "f.txt").write_text("in")
        (cwd / "inner").symlink_to(cwd / "real", target_is_directory=True)  # points inside: still refused
        for call in (lambda: client.get_file(kernel.id, "inner/f.txt"),
                     lambda: client.put_file(kernel.id, "inner/g.txt", b"x")):
            with pytest.raises(PermissionDenied, match="leaves the kernel's working directory: it goes through a "
                                                       "symbolic link, and links are not followed"):
                await call()
        assert not (cwd / "real" / "g.txt").exists()
        assert await client.get_file(kernel.id, "real/f.txt") == b"in"
        await client.release(lease.id)


@pytest.fixture(params=["openat2", "walk"])
def resolver(request, monkeypatch):
    """Both ways paths.py opens beneath a directory: openat2 where the kernel has it, else the walk."""
    if request.param == "walk":
        monkeypatch.setitem(paths._openat2_state, "available", False)
    else:
        probe = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        try:
            fd = paths._openat2(probe, "tmp", paths.DIR_FLAGS)
        finally:
            os.close(probe)
        if fd is None:
            pytest.skip("this kernel has no openat2 (Linux < 5.6 or filtered)")
        os.close(fd)
    return request.param


def test_open_beneath_wins_a_swap_race_both_ways(resolver, tmp_path):
    """The same race in one process, against paths.open_file and paths.start_upload directly."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_bytes(OUTSIDE_SECRET)
    (root / "d").mkdir()
    (root / "d" / "secret.txt").write_bytes(b"inside")
    where = "the test directory"
    swapper = Swapper(root, outside)
    reads = writes = refusals = 0
    leaked: list[bytes] = []
    swapper.start()
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                fd = paths.open_file(root, "d/secret.txt", where)
                with os.fdopen(fd, "rb") as f:
                    data = f.read()
                reads += 1
                if data != b"inside":
                    leaked.append(data)
                upload = paths.start_upload(root, f"d/planted-{writes}.txt", where)
                os.write(upload.fd, b"x")
                upload.commit()
                writes += 1
            except (paths.PathEscapes, OSError):
                refusals += 1
    finally:
        swapper.stop.set()
        swapper.join(timeout=10)
    assert reads and writes and refusals and swapper.swaps > 10, (reads, writes, refusals, swapper.swaps)
    assert not leaked
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


# ---------------------------------------------------------------------------- file-system identity

NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="switching the file-system uid needs root (CAP_SETUID)")
def test_file_ops_run_with_the_given_identity():
    # pytest's tmp_path sits in a 0700 directory that nobody cannot pass through.
    with tempfile.TemporaryDirectory() as top:
        base = Path(top)
        base.chmod(0o755)
        check_identity_switch(base)


def check_identity_switch(tmp_path: Path) -> None:
    from tf_remoting.worker.transfers import as_identity

    private = tmp_path / "root-only"
    private.mkdir(mode=0o700)
    (private / "secret.txt").write_text("root's")
    shared = tmp_path / "nobody"
    shared.mkdir()
    os.chown(shared, NOBODY, NOBODY)
    where = "the test directory"

    with pytest.raises(PermissionError):
        as_identity((NOBODY, NOBODY), paths.open_file, tmp_path, "root-only/secret.txt", where)
    upload = as_identity((NOBODY, NOBODY), paths.start_upload, shared, "sub/new.txt", where)
    os.write(upload.fd, b"theirs")
    as_identity((NOBODY, NOBODY), upload.commit)
    made = shared / "sub" / "new.txt"
    assert made.read_bytes() == b"theirs"
    assert (made.stat().st_uid, made.stat().st_gid) == (NOBODY, NOBODY)
    assert (made.parent.stat().st_uid, made.parent.stat().st_gid) == (NOBODY, NOBODY)
    # Switched back afterwards: this thread is root again.
    fd = paths.open_file(tmp_path, "root-only/secret.txt", where)
    os.close(fd)
    assert (os.getuid(), os.geteuid()) == (0, 0)


# ---------------------------------------------------------------------------- the Jupyter side (%vgpu push / pull)

def usage_error(result) -> str:
    assert result.status == "error", result.reply
    assert result.reply["content"]["ename"] == "UsageError", result.reply
    return result.reply["content"]["evalue"]


async def test_transfers_stay_in_the_notebook_directory_and_never_overwrite_unasked(tf_worker_factory, tmp_path):
    """What a kernel (or anyone holding its token) can make its Jupyter side do: nothing outside
    the notebook's directory, symlinks included, and no existing file replaced without --overwrite."""
    worker = tf_worker_factory(["--host-vram", "2Gi", "--no-shares-filesystem"]).start()
    notebook_dir, outside = tmp_path / "notebooks", tmp_path / "outside"
    notebook_dir.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    (notebook_dir / "escape").symlink_to(outside, target_is_directory=True)
    (notebook_dir / "secret-link.txt").symlink_to(outside / "secret.txt")
    (notebook_dir / ".bashrc").write_text("mine")
    async with worker.client() as client:
        lease, kernel, remote = await start_remote_kernel(client, 64 * MiB, 1, ttl_seconds=600)
        remote.channels.serve_transfers(notebook_dir)
        try:
            await remote.execute("open('.bashrc', 'w').write('planted'); open('new.txt', 'w').write('v1')")
            # No overwrite unless asked; the refusal says how.
            message = usage_error(await remote.execute("%vgpu pull .bashrc"))
            assert "'.bashrc' already exists" in message and "--overwrite" in message
            assert (notebook_dir / ".bashrc").read_text() == "mine"
            assert (await remote.execute("%vgpu pull new.txt")).status == "ok"
            await remote.execute("open('new.txt', 'w').write('v2')")
            assert "already exists" in usage_error(await remote.execute("%vgpu pull new.txt"))
            assert (notebook_dir / "new.txt").read_text() == "v1"
            result = await remote.execute("%vgpu pull --overwrite new.txt")
            assert result.status == "ok", result.reply["content"]
            assert (notebook_dir / "new.txt").read_text() == "v2"
            assert "--overwrite belongs to %vgpu pull" in usage_error(
                await remote.execute("%vgpu push --overwrite new.txt"))
            # Symlinks in the notebook's directory are not followed, either way.
            for cell in ("%vgpu push escape/secret.txt", "%vgpu push secret-link.txt",
                         "%vgpu pull new.txt escape/planted.txt", "%vgpu pull --overwrite new.txt secret-link.txt",
                         "%vgpu push /etc/hostname", "%vgpu pull new.txt ../planted.txt"):
                message = usage_error(await remote.execute(cell))
                whys = ("leaves the notebook's directory", "relative to the notebook's")
                assert any(why in message for why in whys), (cell, message)
            # The same with the kernel's token straight against the worker, as a thief would.
            token = (await remote.execute("import os; print(os.environ['TF_VGPU_TOKEN'], end='')")).stdout()
            async with worker.client(token) as thief:
                for direction, client_path in ((pb.TRANSFER_FROM_KERNEL, ".bashrc"),
                                               (pb.TRANSFER_FROM_KERNEL, "escape/planted.txt"),
                                               (pb.TRANSFER_TO_KERNEL, "escape/secret.txt"),
                                               (pb.TRANSFER_TO_KERNEL, "../outside/secret.txt")):
                    result = await thief.request_transfer(kernel.id, direction, client_path, "stolen.txt", timeout=30)
                    assert not result.ok and result.message, (client_path, result)
            assert (await remote.execute("import os; print(os.path.exists('stolen.txt'))")).stdout().strip() == "False"
        finally:
            await remote.close()
        await client.release(lease.id)
    assert (notebook_dir / ".bashrc").read_text() == "mine"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "not yours"


@pytest.mark.skipif(os.geteuid() != 0, reason="tenant uids need a worker run as root")
async def test_with_tenant_uids_files_are_the_principals_and_the_race_gains_nothing(tmp_path):
    """--tenant-uids: GetFile/PutFile act with the principal's uid: what they create is the
    principal's, and a root-only file outside stays out of reach even through a swapped link."""
    import stat as stat_mod
    import sys

    import tf_remoting
    from tf_remoting.pytest_plugin import WorkerProcess
    from tf_remoting.worker.tenants import unreachable_for_others

    blocked = unreachable_for_others([sys.executable, sys.prefix, sys.base_prefix,
                                      os.path.dirname(tf_remoting.__file__)])
    modes = {path: os.stat(path).st_mode for path in blocked}
    for path, mode in modes.items():
        os.chmod(path, stat_mod.S_IMODE(mode) | stat_mod.S_IXOTH)
    worker = WorkerProcess(["--host-vram", "2Gi", "--tenant-uids", "20300-20309", "--no-shares-filesystem"])
    os.chmod(worker.root, 0o711)
    os.chmod(worker.token_file, 0o600)
    outside = Path(tempfile.mkdtemp(prefix="tf-outside-"))  # root's, 0700
    try:
        worker.start()
        (outside / "secret.txt").write_bytes(OUTSIDE_SECRET)
        before = snapshot(outside)
        async with worker.client() as client:
            lease = await client.allocate(vram=64 * MiB, compute=1, ttl_seconds=600)
            kernel = await client.start_kernel(lease.id, key=secrets.token_hex(16).encode())
            cwd = Path(kernel.cwd)
            owner = cwd.stat().st_uid
            assert 20300 <= owner <= 20309
            await client.put_file(kernel.id, "sub/mine.txt", b"x")
            made = cwd / "sub" / "mine.txt"
            assert (made.stat().st_uid, made.parent.stat().st_uid) == (owner, owner)
            # Swap a directory of theirs for a link to root's secret while files move.
            (cwd / "d").mkdir()
            (cwd / "d" / "secret.txt").write_bytes(b"inside")
            swapper = Swapper(cwd, outside)
            leaked: list[bytes] = []
            swapper.start()
            try:
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    with contextlib.suppress(RemotingError):
                        data = await asyncio.wait_for(client.get_file(kernel.id, "d/secret.txt"), CALL_TIMEOUT)
                        if data != b"inside":
                            leaked.append(data)
                    with contextlib.suppress(RemotingError):
                        await asyncio.wait_for(client.put_file(kernel.id, "d/planted.txt", b"x"), CALL_TIMEOUT)
            finally:
                swapper.stop.set()
                swapper.join(timeout=10)
            await client.release(lease.id)
        assert swapper.swaps > 10 and not leaked
        assert snapshot(outside) == before
    finally:
        worker.cleanup()
        shutil.rmtree(outside, ignore_errors=True)
        for path, mode in modes.items():
            os.chmod(path, stat_mod.S_IMODE(mode))
