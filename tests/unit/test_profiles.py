"""Profiles: built-ins, parsing, kernelspecs, the profile store, the committed kernels/ folder."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tf_jupyter.profiles import (
    BUILTIN_PROFILES,
    Profile,
    ProfileError,
    ProfileStore,
    QuantityError,
    kernelspec,
    parse_profile_spec,
    write_builtin_kernelspecs,
)

GiB = 2**30
REPO = Path(__file__).resolve().parents[2]


def test_builtins_and_display_names():
    assert set(BUILTIN_PROFILES) == {"small", "medium", "large", "whole"}
    small, medium, large, whole = (BUILTIN_PROFILES[n] for n in ("small", "medium", "large", "whole"))
    assert (small.vram, small.compute) == (4 * GiB, 10)
    assert (medium.vram, medium.compute) == (8 * GiB, 25)
    assert (large.vram, large.compute) == (16 * GiB, 50)
    assert whole.whole_device and (whole.vram, whole.compute) == (0, 100)
    assert small.display_name == "Python 3 · vGPU 4 GiB · 10 %"
    assert large.display_name == "Python 3 · vGPU 16 GiB · 50 %"
    assert whole.display_name == "Python 3 · whole GPU"
    assert small.kernelspec_name == "vgpu-small"


def test_custom_profile_display_name_names_it():
    p = parse_profile_spec("train", "8Gi", "25%", count=2, qos="high")
    assert p == Profile("train", 8 * GiB, 25, count=2, qos="high")
    assert p.display_name == "Python 3 · 2 × vGPU 8 GiB · 25 % · high QoS (train)"
    assert parse_profile_spec("big", whole_device=True, count=2).display_name == "Python 3 · 2 whole GPUs (big)"


def test_metadata_round_trip():
    for p in [*BUILTIN_PROFILES.values(), parse_profile_spec("x-1", "1.5Gi", "7", count="3", qos="LOW")]:
        assert Profile.from_metadata(json.loads(json.dumps(p.to_metadata()))) == p
    assert set(BUILTIN_PROFILES["small"].to_metadata()) >= {"name", "vram", "compute", "count", "qos", "whole_device"}


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"name": "Big"}, ProfileError, "invalid profile name"),
        ({"name": "-x"}, ProfileError, "invalid profile name"),
        ({"name": "a" * 42}, ProfileError, "invalid profile name"),
        ({"qos": "urgent"}, ProfileError, "low, medium, high, critical"),
        ({"count": 0}, ProfileError, "1 to 8"),
        ({"count": 9}, ProfileError, "1 to 8"),
        ({"count": "two"}, ProfileError, "whole number"),
        ({"vram": "4Gx"}, QuantityError, "e.g. 4Gi"),
        ({"vram": "0"}, ProfileError, "more than 0"),
        ({"compute": "0%"}, QuantityError, "more than 0"),
        ({"compute": "150%"}, QuantityError, "at most 100"),
        ({"vram": None}, ProfileError, "needs both"),
    ],
)
def test_parse_profile_spec_errors(kwargs, error, words):
    args = {"name": "ok", "vram": "4Gi", "compute": "10%", **kwargs}
    with pytest.raises(error, match=words):
        parse_profile_spec(**args)


def test_errors_are_value_errors():
    assert issubclass(ProfileError, ValueError) and issubclass(QuantityError, ValueError)
    with pytest.raises(ProfileError, match="leave out vram"):
        parse_profile_spec("w", "4Gi", None, whole_device=True)
    with pytest.raises(ProfileError, match="lacks vram"):
        Profile.from_metadata({"name": "x", "compute": 3})


def test_kernelspec_shape():
    spec = kernelspec(BUILTIN_PROFILES["medium"])
    assert spec["argv"] == ["python", "-m", "tf_jupyter.launcher", "--profile", "medium", "-f", "{connection_file}"]
    assert spec["language"] == "python" and spec["interrupt_mode"] == "signal"
    meta = spec["metadata"]
    assert meta["kernel_provisioner"] == {"provisioner_name": "tf-vgpu", "config": {"profile": "medium"}}
    assert meta["tf_vgpu"] == BUILTIN_PROFILES["medium"].to_metadata()
    assert meta["debugger"] is False
    assert kernelspec(BUILTIN_PROFILES["small"], ["/opt/py", "-m", "x"])["argv"][:3] == ["/opt/py", "-m", "x"]


def test_committed_kernels_match_the_code(tmp_path):
    write_builtin_kernelspecs(tmp_path)
    generated = {p.relative_to(tmp_path): p.read_text() for p in tmp_path.rglob("kernel.json")}
    committed = {p.relative_to(REPO / "kernels"): p.read_text() for p in (REPO / "kernels").rglob("kernel.json")}
    assert generated == committed, "kernels/ is stale: regenerate it (see kernels/README.md)"


def test_jupyter_client_resolves_python_to_its_own_interpreter(tmp_path):
    # Why the argv says "python": KernelManager.format_kernel_cmd (used by LocalProvisioner, so by
    # jupyter_server, jupyter console and nbclient) replaces it with sys.executable. The provisioner
    # stanza is dropped here: without the tf-vgpu entry point jupyter_client hides the kernelspec.
    spec = kernelspec(BUILTIN_PROFILES["small"])
    del spec["metadata"]["kernel_provisioner"]
    (tmp_path / "vgpu-small").mkdir()
    (tmp_path / "vgpu-small" / "kernel.json").write_text(json.dumps(spec))
    code = (
        "import sys\n"
        "from jupyter_client.kernelspec import KernelSpecManager\n"
        "from jupyter_client.manager import KernelManager\n"
        f"ksm = KernelSpecManager(kernel_dirs=[{str(tmp_path)!r}], ensure_native_kernel=False)\n"
        "km = KernelManager(kernel_spec_manager=ksm, kernel_name='vgpu-small')\n"
        "km.connection_file = 'c.json'\n"
        "cmd = km.format_kernel_cmd()\n"
        "assert cmd[0] == sys.executable, cmd\n"
        "assert cmd[1:5] == ['-m', 'tf_jupyter.launcher', '--profile', 'small'], cmd\n"
        "assert cmd[-1].endswith('c.json'), cmd\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=60)


def test_store_add_list_remove(tmp_path):
    store = ProfileStore(tmp_path / "kernels")
    assert store.list() == []
    write_builtin_kernelspecs(tmp_path / "kernels")
    (tmp_path / "kernels" / "python3").mkdir()  # not ours: ignored
    (tmp_path / "kernels" / "vgpu-other").mkdir()  # no kernel.json: ignored
    assert [p.name for p in store.list()] == ["large", "medium", "small", "whole"]

    train = parse_profile_spec("train", "8Gi", "25%", count=2)
    path = store.add(train)
    assert path == tmp_path / "kernels" / "vgpu-train" / "kernel.json"
    assert json.loads(path.read_text()) == kernelspec(train)
    assert store.get("train") == train
    with pytest.raises(ProfileError, match="already exists"):
        store.add(parse_profile_spec("train", "4Gi", "10%"))
    store.add(parse_profile_spec("train", "4Gi", "10%"), replace=True)
    assert store.get("train").vram == 4 * GiB

    store.remove("small")  # built-ins may go too
    assert not (tmp_path / "kernels" / "vgpu-small").exists()
    with pytest.raises(ProfileError, match=r"no vGPU profile named 'nope' .*large, medium, train, whole"):
        store.remove("nope")
    assert (tmp_path / "kernels" / "python3").is_dir()


def test_store_names_a_broken_kernelspec(tmp_path):
    (tmp_path / "vgpu-bad").mkdir()
    (tmp_path / "vgpu-bad" / "kernel.json").write_text("{not json")
    with pytest.raises(ProfileError, match="vgpu-bad"):
        ProfileStore(tmp_path).list()
    (tmp_path / "vgpu-bad" / "kernel.json").write_text(json.dumps({"metadata": {"tf_vgpu": {"name": "bad"}}}))
    with pytest.raises(ProfileError, match=r"vgpu-bad.*lacks vram, compute"):
        ProfileStore(tmp_path).list()


def test_store_uses_its_argv_prefix(tmp_path):
    store = ProfileStore(tmp_path, argv_prefix=["/env/bin/python", "-m", "tf_jupyter.launcher"])
    path = store.add(BUILTIN_PROFILES["small"])
    assert json.loads(path.read_text())["argv"][0] == "/env/bin/python"


def test_plain_python_modules_import_no_server_stack():
    code = (
        "import sys\n"
        "import tf_jupyter.placement, tf_jupyter.profiles\n"
        "print(sorted(m for m in ('tornado', 'grpc', 'asyncio') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]"
