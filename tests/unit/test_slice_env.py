"""The environment a kernel gets for its slice (Worker.slice_env), in each isolation mode.

A real Worker with a real ledger; its GPUs come from tests/fakes/fake_pynvml.py (this machine has no
NVIDIA driver), its host device from the real host backend.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakes"))

from fake_pynvml import FakeNvml, GiB  # noqa: E402

from tf_remoting.devices import HostBackend  # noqa: E402
from tf_remoting.devices.nvml import NvmlBackend  # noqa: E402
from tf_remoting.proto import pb  # noqa: E402
from tf_remoting.worker.config import WorkerConfig  # noqa: E402
from tf_remoting.worker.state import Worker  # noqa: E402

GPU0, GPU1 = "GPU-fake-0000-0000", "GPU-fake-0000-0001"
KERNEL_TOKEN = "kernel-token-for-the-test"
MakeWorker = Callable[..., Worker]


@pytest.fixture
def make_worker() -> Iterator[MakeWorker]:
    """make_worker("nvml" | "host", **config): a Worker over a fresh state directory."""
    made: list[tuple[Worker, Path]] = []

    def make(backend: str, **settings: object) -> Worker:
        root = Path(tempfile.mkdtemp(prefix="tfse-", dir="/tmp"))  # short: unix socket paths
        config = WorkerConfig(state_dir=str(root / "state"), backend=backend, **settings)  # type: ignore[arg-type]
        devices = (NvmlBackend(FakeNvml(), mps_probe=lambda: True) if backend == "nvml" else HostBackend())
        worker = Worker(config, backend=devices)
        worker.address = "127.0.0.1:50051"
        worker.kernel_address = f"unix:{root / 'state' / 'kernels.sock'}"
        made.append((worker, root))
        return worker

    yield make
    for worker, root in made:
        worker.ledger.close()
        worker.backend.close()
        shutil.rmtree(root, ignore_errors=True)


def test_soft_mode_on_one_gpu(make_worker: MakeWorker) -> None:
    w = make_worker("nvml")
    lease = w.ledger.allocate("alice", vram=10 * GiB, compute=30, mode=pb.ISOLATION_MODE_SOFT)
    env = w.slice_env(lease, "k1", KERNEL_TOKEN)
    device = lease.slices[0].device_uuid
    assert device in (GPU0, GPU1)
    assert env["CUDA_VISIBLE_DEVICES"] == device
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.2500"  # 10 of the fake's 40 GiB
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert {k: v for k, v in env.items() if k.startswith("TF_VGPU_")} == {
        "TF_VGPU_LEASE_ID": lease.id,
        "TF_VGPU_KERNEL_ID": "k1",
        "TF_VGPU_PRINCIPAL": "alice",
        "TF_VGPU_DEVICE_UUIDS": device,
        "TF_VGPU_DEVICE_NAME": "FAKE NVIDIA A100-SXM4-40GB",
        "TF_VGPU_DEVICE_KIND": "gpu",
        "TF_VGPU_VRAM_LIMIT": str(10 * GiB),
        "TF_VGPU_VRAM_TOTAL": str(40 * GiB),
        "TF_VGPU_COMPUTE_LIMIT": "30",
        "TF_VGPU_MODE": "soft",
        "TF_VGPU_MEMORY_ENFORCEMENT": "framework",
        "TF_VGPU_WORKER": w.kernel_address,  # kernels reach the worker over its unix socket
        "TF_VGPU_TOKEN": KERNEL_TOKEN,
        "TF_VGPU_SHARES_FILESYSTEM": "1",
    }
    assert not any(k.startswith("CUDA_MPS_") for k in env)


def test_soft_mode_on_two_gpus_shows_both(make_worker: MakeWorker) -> None:
    w = make_worker("nvml", shares_filesystem=False)
    lease = w.ledger.allocate("alice", vram=4 * GiB, compute=50, count=2, mode=pb.ISOLATION_MODE_SOFT)
    env = w.slice_env(lease, "k2", KERNEL_TOKEN)
    uuids = [s.device_uuid for s in lease.slices]
    assert sorted(uuids) == [GPU0, GPU1]
    assert env["CUDA_VISIBLE_DEVICES"] == env["TF_VGPU_DEVICE_UUIDS"] == ",".join(uuids)
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.1000"
    assert env["TF_VGPU_SHARES_FILESYSTEM"] == "0"


def test_mps_mode(make_worker: MakeWorker) -> None:
    w = make_worker("nvml")
    lease = w.ledger.allocate("bob", vram=6 * GiB, compute=40, count=2, mode=pb.ISOLATION_MODE_MPS)
    env = w.slice_env(lease, "k3", KERNEL_TOKEN)
    assert env["CUDA_VISIBLE_DEVICES"] == ",".join(s.device_uuid for s in lease.slices)
    # Devices are numbered from 0 inside the kernel, in CUDA_VISIBLE_DEVICES order.
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=6144M,1=6144M"
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "40"
    assert env["TF_VGPU_MODE"] == "mps"
    assert env["TF_VGPU_MEMORY_ENFORCEMENT"] == "mps"
    assert not any(k.startswith(("XLA_", "TF_FORCE_")) for k in env)


def test_exclusive_mode_has_no_caps(make_worker: MakeWorker) -> None:
    w = make_worker("nvml")
    lease = w.ledger.allocate("alice", vram=40 * GiB, compute=100, mode=pb.ISOLATION_MODE_EXCLUSIVE)
    env = w.slice_env(lease, "k4", KERNEL_TOKEN)
    assert env["CUDA_VISIBLE_DEVICES"] == lease.slices[0].device_uuid
    assert env["TF_VGPU_MODE"] == "exclusive"
    assert not any(k.startswith(("XLA_", "TF_FORCE_", "CUDA_MPS_")) for k in env)


def test_host_device(make_worker: MakeWorker) -> None:
    w = make_worker("host", host_vram="2Gi")
    host = w.devices[0]
    lease = w.ledger.allocate("alice", vram=GiB, compute=25, mode=pb.ISOLATION_MODE_HOST)
    env = w.slice_env(lease, "k5", KERNEL_TOKEN)
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # no GPU, and any GPU the host has stays hidden
    assert env["TF_VGPU_DEVICE_KIND"] == "host"
    assert env["TF_VGPU_DEVICE_UUIDS"] == host.uuid
    assert env["TF_VGPU_DEVICE_NAME"] == host.name and "host device" in host.name
    assert env["TF_VGPU_MODE"] == "host"
    assert env["TF_VGPU_VRAM_LIMIT"] == str(GiB)
    assert env["TF_VGPU_VRAM_TOTAL"] == str(2 * GiB)  # what the worker offers, not all the RAM
    assert env["TF_VGPU_MEMORY_ENFORCEMENT"] == host.memory_enforcement
    assert not any(k.startswith(("XLA_", "TF_FORCE_", "CUDA_MPS_")) for k in env)


def test_worker_address_without_a_kernel_socket(make_worker: MakeWorker) -> None:
    w = make_worker("host")
    w.kernel_address = ""
    lease = w.ledger.allocate("alice", vram=GiB, compute=10, mode=pb.ISOLATION_MODE_HOST)
    assert w.slice_env(lease, "k6", KERNEL_TOKEN)["TF_VGPU_WORKER"] == "127.0.0.1:50051"


def test_the_slice_environment_reads_back_as_a_slice_env(make_worker: MakeWorker) -> None:
    from tf_remoting.slice_env import SliceEnv

    w = make_worker("nvml")
    lease = w.ledger.allocate("alice", vram=10 * GiB, compute=30, mode=pb.ISOLATION_MODE_SOFT)
    read = SliceEnv.from_env(w.slice_env(lease, "k6", KERNEL_TOKEN))
    assert (read.lease_id, read.mode, read.memory_enforcement, read.vram_limit) == (
        lease.id, "soft", "framework", 10 * GiB)


def test_every_mode_has_one_registry_entry_named_by_the_proto() -> None:
    from tf_remoting.proto import enum_name, enum_names, enum_value
    from tf_remoting.worker import isolation

    assert sorted(m.name for m in isolation.MODES.values()) == sorted(enum_names(pb.IsolationMode))
    assert enum_name(pb.Qos, pb.QOS_HIGH) == "high" and enum_value(pb.Qos, "high") == pb.QOS_HIGH
    assert enum_value(pb.MemoryEnforcement, "cgroup") == pb.MEMORY_ENFORCEMENT_CGROUP
    with pytest.raises(ValueError):
        enum_value(pb.Qos, "urgent")
    assert [m.name for m in isolation.MODES.values() if not m.resizable] == ["exclusive"]


def test_resolve_mode_gives_only_what_the_devices_offer(make_worker: MakeWorker) -> None:
    from tf_remoting.worker.errors import RpcError

    gpu = make_worker("nvml")
    assert gpu.resolve_mode(0) == pb.ISOLATION_MODE_SOFT  # the configured default
    assert gpu.resolve_mode(pb.ISOLATION_MODE_MPS) == pb.ISOLATION_MODE_MPS  # the fake's daemon runs
    with pytest.raises(RpcError, match="'host' is for host devices only"):
        gpu.resolve_mode(pb.ISOLATION_MODE_HOST)
    with pytest.raises(RpcError, match="unknown isolation mode 9; use soft, mps, exclusive, host"):
        gpu.resolve_mode(9)
    host = make_worker("host")
    assert host.resolve_mode(0) == host.resolve_mode(pb.ISOLATION_MODE_SOFT) == pb.ISOLATION_MODE_HOST
    with pytest.raises(RpcError, match="isolation mode mps needs an NVIDIA GPU"):
        host.resolve_mode(pb.ISOLATION_MODE_MPS)
