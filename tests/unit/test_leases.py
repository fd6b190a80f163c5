"""The lease ledger: best fit, atomicity under threads and processes, ownership, expiry, persistence."""

import json
import multiprocessing
import os
import random
import sqlite3
import subprocess
import sys
import threading

import pytest

from tf_remoting.worker.leases import (
    DeviceCapacity,
    InvalidArgument,
    KernelRecord,
    Ledger,
    LedgerError,
    LedgerUnavailable,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SliceAlloc,
)

GiB = 2**30
MiB = 2**20


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def h100(index: int, vram: int = 80 * GiB, compute: int = 100) -> DeviceCapacity:
    return DeviceCapacity(f"GPU-{index}", index, "NVIDIA H100 80GB HBM3", vram, compute)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def open_ledger(tmp_path, clock):
    opened = []

    def _open(devices, path=None):
        ledger = Ledger(path or tmp_path / "ledger.db", devices, clock=clock)
        opened.append(ledger)
        return ledger

    yield _open
    for ledger in opened:
        ledger.close()


def kernel(kernel_id: str, lease_id: str, principal: str = "alice", **changes) -> KernelRecord:
    values = dict(
        id=kernel_id,
        lease_id=lease_id,
        principal=principal,
        nanny_pid=100,
        pid=101,
        status="starting",
        exit_code=None,
        cwd="/home/alice",
        environment="",
        started_at=1_000_000.0,
        directory="/var/lib/tf/kernels/" + kernel_id,
        labels={"notebook": "a.ipynb"},
    )
    values.update(changes)
    return KernelRecord(**values)


# ---------------------------------------------------------------- allocate


def test_allocate_returns_a_lease(open_ledger, clock):
    ledger = open_ledger([h100(0)])
    lease = ledger.allocate("alice", 4 * GiB, 10, ttl_seconds=30, profile="small", labels={"k": "v"})
    assert lease.id.startswith("lease-") and len(lease.id) == len("lease-") + 32
    assert lease.principal == "alice"
    assert lease.slices == [SliceAlloc("GPU-0", 0, 4 * GiB, 10)]
    assert (lease.qos, lease.mode, lease.profile, lease.labels) == (2, 0, "small", {"k": "v"})
    assert lease.created_at == clock.now and lease.expires_at == clock.now + 30
    assert lease.released_at is None
    assert ledger.get("alice", lease.id) == lease
    assert ledger.device_usage() == {"GPU-0": (4 * GiB, 10)}


def test_best_fit_picks_the_tightest_device(open_ledger):
    devices = [h100(0, 40 * GiB), h100(1, 16 * GiB), h100(2, 80 * GiB), h100(3, 4 * GiB)]
    ledger = open_ledger(devices)
    # GPU-3 is too small; of the rest, GPU-1 leaves the least VRAM free.
    assert ledger.allocate("alice", 8 * GiB, 10).slices[0].device_uuid == "GPU-1"
    assert ledger.allocate("alice", 8 * GiB, 10).slices[0].device_uuid == "GPU-1"
    # GPU-1 is now full: next tightest is GPU-0.
    assert ledger.allocate("alice", 8 * GiB, 10).slices[0].device_uuid == "GPU-0"
    assert ledger.allocate("alice", 4 * GiB, 10).slices[0].device_uuid == "GPU-3"


def test_best_fit_ties_break_on_compute_then_index(open_ledger):
    ledger = open_ledger([h100(0, 16 * GiB, compute=200), h100(1, 16 * GiB), h100(2, 16 * GiB)])
    # Same VRAM left everywhere: GPU-1 and GPU-2 leave less compute free than GPU-0; index decides.
    assert ledger.allocate("alice", GiB, 10).slices[0].device_uuid == "GPU-1"
    # GPU-1 now has the least VRAM free.
    assert ledger.allocate("alice", GiB, 10).slices[0].device_uuid == "GPU-1"


def test_model_filter(open_ledger):
    a100 = DeviceCapacity("GPU-a", 1, "NVIDIA A100-SXM4-40GB", 40 * GiB, 100)
    ledger = open_ledger([h100(0, 16 * GiB), a100])
    assert ledger.allocate("alice", GiB, 10, model="a100").slices[0].device_uuid == "GPU-a"
    assert ledger.allocate("alice", GiB, 10, model="H100").slices[0].device_uuid == "GPU-0"
    with pytest.raises(ResourceExhausted) as info:
        ledger.allocate("alice", GiB, 10, model="B200")
    assert str(info.value) == (
        "no device matches model 'B200'; this worker has: NVIDIA A100-SXM4-40GB, NVIDIA H100 80GB HBM3."
    )
    assert info.value.code == "RESOURCE_EXHAUSTED"


def test_exhausted_says_what_was_missing(open_ledger):
    ledger = open_ledger([DeviceCapacity("GPU-abc", 0, "NVIDIA H100", 8 * GiB, 100), h100(1, 2 * GiB)])
    ledger.allocate("alice", 2 * GiB + 512 * MiB, 60)  # only GPU-abc has the VRAM
    with pytest.raises(ResourceExhausted) as info:
        ledger.allocate("bob", 8 * GiB, 10)
    assert str(info.value).startswith(
        "needs 8 GiB VRAM and 10 % compute on 1 device; the largest free slice is "
        "5.5 GiB VRAM / 40 % compute on GPU-abc (NVIDIA H100)."
    )
    # Compute, not VRAM, can be what is missing.
    with pytest.raises(ResourceExhausted, match="needs 3 GiB VRAM and 50 % compute"):
        ledger.allocate("bob", 3 * GiB, 50)
    ledger.allocate("bob", 2 * GiB, 100)  # GPU-1 has all its compute free


def test_no_devices(open_ledger):
    ledger = open_ledger([])
    with pytest.raises(ResourceExhausted, match="no devices"):
        ledger.allocate("alice", GiB, 10)
    assert ledger.device_usage() == {}


def test_count_takes_distinct_devices(open_ledger):
    ledger = open_ledger([h100(i, 16 * GiB) for i in range(4)])
    ledger.allocate("alice", 10 * GiB, 10)  # GPU-0 now has 6 GiB free
    lease = ledger.allocate("alice", 6 * GiB, 20, count=3)
    uuids = [s.device_uuid for s in lease.slices]
    assert len(set(uuids)) == 3
    assert uuids == ["GPU-0", "GPU-1", "GPU-2"]  # GPU-0 is the tightest fit, then by index
    assert all((s.vram, s.compute) == (6 * GiB, 20) for s in lease.slices)


def test_count_fails_whole(open_ledger):
    ledger = open_ledger([h100(i, 16 * GiB) for i in range(3)])
    ledger.allocate("alice", 12 * GiB, 10)
    before = ledger.device_usage()
    with pytest.raises(ResourceExhausted) as info:
        ledger.allocate("bob", 8 * GiB, 10, count=3)
    assert "each of 3 distinct devices" in str(info.value)
    assert "only 2 devices" in str(info.value)
    assert ledger.device_usage() == before
    assert [lease.principal for lease in ledger.leases()] == ["alice"]
    with pytest.raises(ResourceExhausted):
        ledger.allocate("bob", GiB, 10, count=4)  # more devices than the worker has


def test_vram_never_overcommitted(open_ledger):
    ledger = open_ledger([h100(0, 10 * GiB)])
    for _ in range(3):
        ledger.allocate("alice", 3 * GiB, 1)
    with pytest.raises(ResourceExhausted):
        ledger.allocate("alice", 2 * GiB, 1)
    ledger.allocate("alice", GiB, 1)
    assert ledger.device_usage() == {"GPU-0": (10 * GiB, 4)}


def test_compute_oversubscription(open_ledger):
    ledger = open_ledger([h100(0, compute=200)])
    ledger.allocate("alice", GiB, 100)
    ledger.allocate("bob", GiB, 100)
    with pytest.raises(ResourceExhausted, match="0 % compute"):
        ledger.allocate("carol", GiB, 1)
    assert ledger.device_usage() == {"GPU-0": (2 * GiB, 200)}
    ledger.set_devices([h100(0, compute=300)])
    ledger.allocate("carol", GiB, 100)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vram": 0},
        {"vram": -1},
        {"vram": 2**62 + 1},
        {"vram": 1.5},
        {"vram": True},
        {"compute": 0},
        {"compute": 101},
        {"compute": "10"},
        {"count": 0},
        {"count": 65},
        {"ttl_seconds": 0},
        {"ttl_seconds": 86401},
        {"qos": 9},
        {"principal": ""},
        {"labels": {"a": 1}},
    ],
)
def test_allocate_validates(open_ledger, kwargs):
    ledger = open_ledger([h100(0)])
    args = {"principal": "alice", "vram": GiB, "compute": 10, **kwargs}
    with pytest.raises(InvalidArgument) as info:
        ledger.allocate(**args)
    assert info.value.code == "INVALID_ARGUMENT"
    assert ledger.leases() == []


# ---------------------------------------------------------------- concurrency


def _assert_within_capacity(usage, devices):
    for device in devices:
        vram, compute = usage[device.uuid]
        assert vram <= device.vram_total and compute <= device.compute_capacity, (device, usage)


def _db_active_sums(path) -> dict[str, tuple[int, int]]:
    """Usage summed straight from the database file, independently of the Ledger."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT s.device_uuid, SUM(s.vram), SUM(s.compute) FROM slices s JOIN leases l "
            "ON l.id = s.lease_id WHERE l.released_at IS NULL GROUP BY s.device_uuid"
        ).fetchall()
    finally:
        conn.close()
    return {uuid_: (vram, compute) for uuid_, vram, compute in rows}


def _assert_history_within_capacity(path, devices):
    """Replay every lease's creation and release in time order: capacity held at every point."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT l.created_at, l.released_at, s.device_uuid, s.vram, s.compute "
            "FROM slices s JOIN leases l ON l.id = s.lease_id"
        ).fetchall()
    finally:
        conn.close()
    events = []
    for created, released, uuid_, vram, compute in rows:
        events.append((created, 1, uuid_, vram, compute))
        if released is not None:
            events.append((released, 0, uuid_, -vram, -compute))  # at equal times, releases first
    events.sort()
    running = {d.uuid: [0, 0] for d in devices}
    for _, _, uuid_, vram, compute in events:
        running[uuid_][0] += vram
        running[uuid_][1] += compute
        _assert_within_capacity({u: tuple(v) for u, v in running.items()}, devices)
    return len(rows)


def test_thread_storm_fills_exactly(open_ledger):
    devices = [h100(0, 10 * GiB), h100(1, 10 * GiB)]
    ledger = open_ledger(devices)
    results: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def storm():
        start.wait()
        for _ in range(30):
            try:
                results.append(ledger.allocate("alice", 3 * GiB, 30).id)
            except ResourceExhausted:
                pass
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

    threads = [threading.Thread(target=storm) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # 3 slices of 3 GiB / 30 % fit each device: exactly 6 of the 240 attempts succeed.
    assert len(results) == len(set(results)) == 6
    assert ledger.device_usage() == {"GPU-0": (9 * GiB, 90), "GPU-1": (9 * GiB, 90)}
    assert ledger.check() == []


def test_thread_storm_allocate_release(open_ledger, tmp_path):
    devices = [h100(0, 8 * GiB), h100(1, 8 * GiB, compute=150)]
    ledger = Ledger(tmp_path / "ledger.db", devices)  # the real clock: history is replayed in order
    errors: list[BaseException] = []
    successes = []

    def storm(seed):
        rng = random.Random(seed)
        held = []
        try:
            for _ in range(30):
                try:
                    lease = ledger.allocate(f"p{seed}", rng.randint(1, 4) * GiB, rng.choice([10, 30, 50]))
                    held.append(lease.id)
                    successes.append(lease.id)
                except ResourceExhausted:
                    pass
                _assert_within_capacity(ledger.device_usage(), devices)
                if held and rng.random() < 0.5:
                    assert ledger.release(f"p{seed}", held.pop(0)) is True
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=storm, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert successes
        assert _assert_history_within_capacity(tmp_path / "ledger.db", devices) == len(successes)
        assert _db_active_sums(tmp_path / "ledger.db") == {
            u: v for u, v in ledger.device_usage().items() if v != (0, 0)
        }
        assert ledger.check() == []
    finally:
        ledger.close()


def _process_storm(path: str, devices: list[DeviceCapacity], seed: int) -> tuple[int, int]:
    """One process of the storm: its own Ledger on the shared file, 50 allocate/release rounds."""
    rng = random.Random(seed)
    ledger = Ledger(path, devices)
    allocated = exhausted = 0
    held: list[str] = []
    try:
        for _ in range(50):
            try:
                lease = ledger.allocate(f"proc{seed}", rng.randint(1, 4) * GiB, rng.choice([10, 20, 40]))
                held.append(lease.id)
                allocated += 1
            except ResourceExhausted:
                exhausted += 1
            _assert_within_capacity(ledger.device_usage(), devices)
            if len(held) > 2 or (held and rng.random() < 0.4):
                assert ledger.release(f"proc{seed}", held.pop(rng.randrange(len(held)))) is True
    finally:
        ledger.close()
    return allocated, exhausted


def test_process_storm_never_overcommits(tmp_path):
    devices = [h100(0, 8 * GiB), h100(1, 6 * GiB, compute=120)]
    path = str(tmp_path / "ledger.db")
    Ledger(path, devices).close()  # create the schema once, as the worker does at start
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(_process_storm, [(path, devices, seed) for seed in range(4)])
    allocated = sum(a for a, _ in results)
    assert allocated > 0 and sum(e for _, e in results) > 0  # the storm really hit the limits
    assert _assert_history_within_capacity(path, devices) == allocated
    with Ledger(path, devices) as ledger:
        assert ledger.check() == []
        _assert_within_capacity(ledger.device_usage(), devices)
        assert _db_active_sums(path) == {u: v for u, v in ledger.device_usage().items() if v != (0, 0)}
        assert len(ledger.leases()) <= 4 * 2


# ---------------------------------------------------------------- renew, release, resize, get


def test_ownership(open_ledger):
    ledger = open_ledger([h100(0)])
    lease = ledger.allocate("alice", GiB, 10)
    for call in (
        lambda: ledger.get("bob", lease.id),
        lambda: ledger.renew("bob", lease.id),
        lambda: ledger.release("bob", lease.id),
        lambda: ledger.resize("bob", lease.id, 2 * GiB, 10),
    ):
        with pytest.raises(PermissionDenied) as info:
            call()
        assert str(info.value) == f"lease {lease.id} belongs to another principal."
        assert info.value.code == "PERMISSION_DENIED"
    assert ledger.get(None, lease.id).principal == "alice"
    assert ledger.leases("bob") == []
    assert [x.id for x in ledger.leases("alice")] == [lease.id]


def test_release_is_idempotent(open_ledger):
    ledger = open_ledger([h100(0)])
    lease = ledger.allocate("alice", GiB, 10)
    assert ledger.release("alice", lease.id) is True
    assert ledger.release("alice", lease.id) is False
    assert ledger.device_usage() == {"GPU-0": (0, 0)}
    with pytest.raises(NotFound, match="released"):
        ledger.get("alice", lease.id)
    with pytest.raises(NotFound):
        ledger.renew("alice", lease.id)
    with pytest.raises(NotFound) as info:
        ledger.release("alice", "lease-unknown")
    assert info.value.code == "NOT_FOUND"
    with pytest.raises(NotFound):
        ledger.get(None, "lease-unknown")
    assert ledger.leases() == []


def test_resize(open_ledger):
    ledger = open_ledger([h100(0, 16 * GiB), h100(1, 16 * GiB)])
    lease = ledger.allocate("alice", 4 * GiB, 10, count=2)
    other = ledger.allocate("bob", 8 * GiB, 50)  # on GPU-0 (tightest, lowest index)
    assert other.slices[0].device_uuid == "GPU-0"
    # Grows into free + own: GPU-0 has 4 GiB free besides alice's 4 GiB.
    grown = ledger.resize("alice", lease.id, 8 * GiB, 50)
    assert [(s.device_uuid, s.vram, s.compute) for s in grown.slices] == [
        ("GPU-0", 8 * GiB, 50),
        ("GPU-1", 8 * GiB, 50),
    ]
    assert ledger.get("alice", lease.id) == grown
    assert ledger.device_usage() == {"GPU-0": (16 * GiB, 100), "GPU-1": (8 * GiB, 50)}
    with pytest.raises(ResourceExhausted) as info:
        ledger.resize("alice", lease.id, 9 * GiB, 50)
    assert str(info.value).startswith(
        f"cannot resize lease {lease.id} to 9 GiB VRAM / 50 % compute: GPU-0 (NVIDIA H100 80GB HBM3) has "
        "0 B VRAM / 0 % compute free besides the lease's own 8 GiB VRAM / 50 % compute."
    )
    assert ledger.get("alice", lease.id) == grown  # unchanged
    shrunk = ledger.resize("alice", lease.id, GiB, 5)
    assert {(s.vram, s.compute) for s in shrunk.slices} == {(GiB, 5)}
    assert ledger.device_usage() == {"GPU-0": (9 * GiB, 55), "GPU-1": (GiB, 5)}
    with pytest.raises(InvalidArgument):
        ledger.resize("alice", lease.id, 0, 5)


# ---------------------------------------------------------------- expiry


def test_expiry_with_injected_clock(open_ledger, clock):
    ledger = open_ledger([h100(0)])
    short = ledger.allocate("alice", GiB, 10, ttl_seconds=30)
    long = ledger.allocate("bob", GiB, 10, ttl_seconds=120)
    clock.now += 29
    assert ledger.expired() == []
    renewed = ledger.renew("alice", short.id)
    assert renewed.expires_at == clock.now + 30
    clock.now += 31
    assert [x.id for x in ledger.expired()] == [short.id]
    assert [x.id for x in ledger.expired(now=clock.now + 1000)] == [short.id, long.id]
    assert ledger.reclaim(short.id) is True
    assert ledger.reclaim(short.id) is False
    assert ledger.expired() == []
    assert [x.id for x in ledger.leases()] == [long.id]
    with pytest.raises(NotFound):
        ledger.reclaim("lease-unknown")


def test_tombstones_are_pruned_eventually(open_ledger, clock):
    ledger = open_ledger([h100(0)])
    lease = ledger.allocate("alice", GiB, 10)
    ledger.release("alice", lease.id)
    clock.now += 8 * 86400
    ledger.allocate("alice", GiB, 10)  # allocation prunes week-old tombstones
    with pytest.raises(NotFound):
        ledger.release("alice", lease.id)


# ---------------------------------------------------------------- persistence and copies


def test_persistence_across_reopen(tmp_path, clock):
    path = tmp_path / "state" / "ledger.db"
    path.parent.mkdir()
    devices = [h100(0), h100(1)]
    with Ledger(path, devices, clock=clock) as ledger:
        lease = ledger.allocate("alice", 4 * GiB, 25, count=2, qos=3, mode=1, profile="p", labels={"a": "b"})
        gone = ledger.allocate("bob", GiB, 10)
        ledger.release("bob", gone.id)
        ledger.add_kernel(kernel("k1", lease.id))
        usage = ledger.device_usage()
    with Ledger(path, devices, clock=clock) as reopened:
        assert reopened.leases() == [lease]
        assert reopened.release("bob", gone.id) is False
        assert reopened.device_usage() == usage
        assert [k.id for k in reopened.kernels()] == ["k1"]
        reopened.set_devices([h100(0, compute=50), h100(1)])
        with pytest.raises(ResourceExhausted):
            reopened.allocate("carol", GiB, 60, count=2)  # GPU-0 has 50 - 25 free
        assert reopened.check() == []


def test_results_are_copies(open_ledger):
    ledger = open_ledger([h100(0)])
    lease = ledger.allocate("alice", GiB, 10, labels={"a": "b"})
    lease.labels["a"] = "changed"
    lease.slices.clear()
    lease.expires_at = 0
    fresh = ledger.get("alice", lease.id)
    assert fresh.labels == {"a": "b"} and len(fresh.slices) == 1 and fresh.expires_at > 0
    for value in vars(fresh).values():
        assert not isinstance(value, (sqlite3.Row, sqlite3.Cursor, sqlite3.Connection))


def test_set_devices_rejects_duplicates(open_ledger):
    ledger = open_ledger([h100(0)])
    with pytest.raises(ValueError, match="twice"):
        ledger.set_devices([h100(0), h100(0)])


# ---------------------------------------------------------------- kernels


def test_kernels(open_ledger):
    ledger = open_ledger([h100(0)])
    lease = ledger.allocate("alice", GiB, 10)
    other = ledger.allocate("bob", GiB, 10)
    ledger.add_kernel(kernel("k1", lease.id, started_at=1.0))
    ledger.add_kernel(kernel("k2", lease.id, started_at=2.0))
    ledger.add_kernel(kernel("k3", other.id, principal="bob", started_at=3.0))
    assert [k.id for k in ledger.kernels()] == ["k1", "k2", "k3"]
    assert [k.id for k in ledger.kernels(lease.id)] == ["k1", "k2"]
    assert ledger.get_kernel("alice", "k1") == kernel("k1", lease.id, started_at=1.0)

    updated = ledger.update_kernel("k1", status="running", pid=4242)
    assert (updated.status, updated.pid) == ("running", 4242)
    ledger.update_kernel("k2", status="exited", exit_code=-9)
    assert [k.id for k in ledger.kernels(lease.id)] == ["k1"]
    assert [k.id for k in ledger.kernels(lease.id, include_exited=True)] == ["k1", "k2"]
    assert ledger.get_kernel(None, "k2").exit_code == -9

    with pytest.raises(PermissionDenied, match="belongs to another principal"):
        ledger.get_kernel("alice", "k3")
    with pytest.raises(NotFound):
        ledger.get_kernel("alice", "k-unknown")
    with pytest.raises(NotFound):
        ledger.update_kernel("k-unknown", status="running")
    with pytest.raises(TypeError):
        ledger.update_kernel("k1", colour="blue")
    with pytest.raises(TypeError):
        ledger.update_kernel("k1", id="k9")
    with pytest.raises(InvalidArgument):
        ledger.update_kernel("k1", status="sleeping")

    with pytest.raises(InvalidArgument, match="already recorded"):
        ledger.add_kernel(kernel("k1", lease.id))
    with pytest.raises(NotFound):
        ledger.add_kernel(kernel("k4", "lease-unknown"))
    with pytest.raises(PermissionDenied):
        ledger.add_kernel(kernel("k4", other.id, principal="alice"))
    with pytest.raises(InvalidArgument):
        ledger.add_kernel(kernel("k4", lease.id, status="bogus"))

    assert ledger.remove_kernel("k1") is True
    assert ledger.remove_kernel("k1") is False
    assert [k.id for k in ledger.kernels(include_exited=True)] == ["k2", "k3"]


# ---------------------------------------------------------------- unwritable ledger

# Root ignores file modes, so chmod cannot make the state directory read-only in this test. Instead a
# child process lowers RLIMIT_FSIZE to 1 byte: the kernel refuses every write past it (EFBIG), exactly
# as a full disk refuses them, so SQLite fails with the same OperationalError ("disk I/O error") that
# a full or read-only disk gives, through the real code path; nothing in the Ledger is patched.
_UNWRITABLE_CHILD = """
import json, resource, signal, sys
from tf_remoting.worker.leases import DeviceCapacity, Ledger, LedgerError
ledger = Ledger(sys.argv[1], [DeviceCapacity("GPU-0", 0, "NVIDIA H100", 80 * 2**30, 100)])
lease = ledger.allocate("alice", 2**30, 10)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
out = {"lease": lease.id}
for name, call in [
    ("allocate", lambda: ledger.allocate("alice", 2**30, 10)),
    ("renew", lambda: ledger.renew("alice", lease.id)),
    ("release", lambda: ledger.release("alice", lease.id)),
]:
    try:
        call()
        out[name] = None
    except LedgerError as exc:
        out[name] = [type(exc).__name__, exc.code, str(exc)]
out["get"] = ledger.get("alice", lease.id).id
out["leases"] = [x.id for x in ledger.leases()]
out["usage"] = ledger.device_usage()["GPU-0"]
print(json.dumps(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs RLIMIT_FSIZE semantics of Linux")
def test_unwritable_ledger_is_unavailable_but_readable(tmp_path):
    path = tmp_path / "ledger.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run(
        [sys.executable, "-B", "-c", _UNWRITABLE_CHILD, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for name in ("allocate", "renew", "release"):
        kind, code, message = out[name]
        assert (kind, code) == ("LedgerUnavailable", "UNAVAILABLE")
        assert "cannot be written" in message and "existing leases and kernels keep running" in message
    assert out["get"] == out["lease"]
    assert out["leases"] == [out["lease"]]
    assert out["usage"] == [GiB, 10]
    # Once the disk takes writes again, nothing was lost and the ledger works.
    with Ledger(path, [h100(0)]) as ledger:
        assert [x.id for x in ledger.leases()] == [out["lease"]]
        assert ledger.release("alice", out["lease"]) is True


def test_unopenable_ledger_is_unavailable(tmp_path):
    with pytest.raises(LedgerUnavailable, match="cannot be opened") as info:
        Ledger(tmp_path / "missing-dir" / "ledger.db", [h100(0)])
    assert info.value.code == "UNAVAILABLE"


def test_error_codes():
    assert issubclass(LedgerUnavailable, LedgerError)
    assert {cls.code for cls in (NotFound, PermissionDenied, ResourceExhausted, InvalidArgument)} == {
        "NOT_FOUND",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "INVALID_ARGUMENT",
    }


def test_wal_mode(tmp_path):
    with Ledger(tmp_path / "ledger.db", [h100(0)]):
        conn = sqlite3.connect(tmp_path / "ledger.db")
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            conn.close()


# ---------------------------------------------------------------- the in-memory view of the rows


def _snapshot(ledger):
    """Everything the view serves, as plain values (compared against a fresh Ledger on the file)."""
    return (
        [vars(x) for x in ledger.leases()],
        ledger.device_usage(),
        [vars(k) for k in ledger.kernels()],
        [x.id for x in ledger.expired(now=2e9)],
    )


def test_view_follows_writes_of_another_ledger_on_the_file(tmp_path, clock):
    path = tmp_path / "ledger.db"
    devices = [h100(0), h100(1)]
    with Ledger(path, devices, clock=clock) as reader, Ledger(path, devices, clock=clock) as writer:
        assert reader.leases() == []  # the view is loaded now
        lease = writer.allocate("alice", 4 * GiB, 25, count=2, labels={"a": "b"})
        assert reader.leases() == [lease]
        assert reader.device_usage() == {"GPU-0": (4 * GiB, 25), "GPU-1": (4 * GiB, 25)}
        clock.now += 10
        renewed = writer.renew("alice", lease.id)
        assert reader.get("alice", lease.id).expires_at == renewed.expires_at
        writer.resize("alice", lease.id, 2 * GiB, 10)
        assert reader.device_usage() == {"GPU-0": (2 * GiB, 10), "GPU-1": (2 * GiB, 10)}
        writer.add_kernel(kernel("k1", lease.id))
        assert [k.id for k in reader.kernels(lease.id)] == ["k1"]
        writer.update_kernel("k1", status="running", pid=4242)
        assert reader.get_kernel("alice", "k1").pid == 4242
        writer.update_kernel("k1", status="exited", exit_code=-9)
        assert reader.kernels() == [] and reader.get_kernel("alice", "k1").exit_code == -9
        assert writer.release("alice", lease.id) is True
        assert reader.leases() == [] and reader.device_usage() == {"GPU-0": (0, 0), "GPU-1": (0, 0)}
        with pytest.raises(NotFound, match="was released"):
            reader.get("alice", lease.id)
        assert reader.release("alice", lease.id) is False


def test_view_follows_a_raw_sqlite_write(tmp_path, clock):
    path = tmp_path / "ledger.db"
    with Ledger(path, [h100(0)], clock=clock) as ledger:
        lease = ledger.allocate("alice", GiB, 10)
        assert [x.id for x in ledger.expired()] == []
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("UPDATE leases SET expires_at = 0 WHERE id = ?", (lease.id,))
        finally:
            conn.close()
        assert [x.id for x in ledger.expired()] == [lease.id]


def _write_in_another_process(path: str, lease_id: str) -> None:
    with Ledger(path, [h100(0)]) as ledger:
        ledger.add_kernel(kernel("k-other", lease_id))
        ledger.allocate("bob", GiB, 20)


def test_view_follows_another_process(tmp_path):
    path = str(tmp_path / "ledger.db")
    with Ledger(path, [h100(0)]) as ledger:
        lease = ledger.allocate("alice", GiB, 10)
        assert ledger.kernels() == []
        proc = multiprocessing.get_context("spawn").Process(target=_write_in_another_process, args=(path, lease.id))
        proc.start()
        proc.join(60)
        assert proc.exitcode == 0
        assert [k.id for k in ledger.kernels()] == ["k-other"]
        assert sorted(x.principal for x in ledger.leases()) == ["alice", "bob"]
        assert ledger.device_usage() == {"GPU-0": (2 * GiB, 30)}


def test_view_matches_the_rows_after_every_kind_of_write(tmp_path, clock):
    path = tmp_path / "ledger.db"
    devices = [h100(0, 10 * GiB), h100(1, 10 * GiB)]
    rng = random.Random(7)
    with Ledger(path, devices, clock=clock) as ledger:
        held: list[str] = []
        kernels: list[str] = []
        for step in range(200):
            clock.now += rng.random() * 10
            op = rng.randrange(7)
            try:
                if op == 0 or not held:
                    held.append(ledger.allocate("alice", rng.randint(1, 3) * GiB, 10, count=rng.randint(1, 2),
                                                ttl_seconds=rng.randint(5, 50)).id)
                elif op == 1:
                    ledger.renew("alice", rng.choice(held))
                elif op == 2:
                    ledger.resize("alice", rng.choice(held), rng.randint(1, 3) * GiB, rng.randint(1, 30))
                elif op == 3:
                    lease_id = held.pop(rng.randrange(len(held)))
                    if rng.random() < 0.5:
                        ledger.release("alice", lease_id)
                    else:
                        ledger.reclaim(lease_id)
                elif op == 4:
                    kernels.append(f"k{step}")
                    ledger.add_kernel(kernel(f"k{step}", rng.choice(held), started_at=clock.now))
                elif op == 5 and kernels:
                    ledger.update_kernel(rng.choice(kernels), status=rng.choice(["running", "exited"]),
                                         pid=rng.randint(2, 99999))
                elif op == 6 and kernels:
                    ledger.remove_kernel(kernels.pop(rng.randrange(len(kernels))))
            except (ResourceExhausted, NotFound):
                pass
            if step % 10 == 0 or step == 199:
                with Ledger(path, devices, clock=clock) as fresh:
                    assert _snapshot(ledger) == _snapshot(fresh), step


def test_steady_reads_ask_sqlite_only_for_the_data_version(open_ledger, clock):
    ledger = open_ledger([h100(0)])
    lease = ledger.allocate("alice", GiB, 10)
    ledger.add_kernel(kernel("k1", lease.id))
    ledger.leases()
    statements: list[str] = []
    ledger._conn.set_trace_callback(statements.append)
    try:
        for _ in range(3):
            ledger.kernels()
            ledger.expired()
            ledger.leases()
            ledger.device_usage()
            ledger.get("alice", lease.id)
            ledger.get_kernel("alice", "k1")
        clock.now += 5
        ledger.renew("alice", lease.id)  # this Ledger's own write patches the view
        statements.clear()
        assert ledger.get("alice", lease.id).expires_at > lease.expires_at
        ledger.leases()
    finally:
        ledger._conn.set_trace_callback(None)
    assert statements and set(statements) == {"PRAGMA data_version"}


def test_live_rows_are_the_views_records_and_stay_as_they_were(open_ledger, clock):
    ledger = open_ledger([h100(0), h100(1)])
    lease = ledger.allocate("alice", GiB, 10, count=2)
    other = ledger.allocate("bob", 2 * GiB, 20)
    ledger.add_kernel(kernel("k1", lease.id))
    live = ledger.live()
    assert list(live.leases) == ledger.leases() and list(live.kernels) == ledger.kernels()
    assert dict(live.device_usage) == ledger.device_usage() == {"GPU-0": (3 * GiB, 30), "GPU-1": (GiB, 10)}
    with pytest.raises(TypeError):
        live.device_usage["GPU-0"] = (0, 0)  # type: ignore[index]
    before = [vars(x).copy() for x in live.leases]
    clock.now += 5
    ledger.renew("alice", lease.id)
    ledger.resize("bob", other.id, GiB, 5)
    ledger.update_kernel("k1", status="running", pid=7)
    assert [vars(x) for x in live.leases] == before  # writes put new records in the view
    again = ledger.live()
    renewed = next(x for x in again.leases if x.id == lease.id)  # leases are listed by id: random order
    assert renewed.expires_at == clock.now + 60 and again.kernels[0].pid == 7
    assert dict(again.device_usage) == {"GPU-0": (2 * GiB, 15), "GPU-1": (GiB, 10)}
    assert ledger.live().leases is ledger.live().leases  # nothing rebuilt while nothing changed
