"""Clients without a server (the kernel launcher, the provisioner in nbclient) read c.TfVgpu exactly as
a Jupyter server does: traitlets' loader, `.py` then `.json` in each directory (`.json` wins), directories
in jupyter_config_path() order, and jupyter_server_config.d/*.json below the main files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tf_jupyter.config import TfVgpu, load_jupyter_config


@pytest.fixture
def config_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    user, env = tmp_path / "user", tmp_path / "env"
    user.mkdir()
    env.mkdir()
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(user))
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", str(env))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    return user, env


def server_settings() -> TfVgpu:
    """What a real jupyter_server loads from the same directories."""
    from jupyter_server.serverapp import ServerApp

    app = ServerApp()
    app.load_config_file()
    return TfVgpu(config=app.config)


def test_json_wins_over_py_as_in_the_server(config_dirs):
    user, _ = config_dirs
    (user / "jupyter_server_config.py").write_text(
        "c.TfVgpu.placement_policy = 'spread'\nc.TfVgpu.queue_timeout = 11.0\nc.TfVgpu.lease_ttl = 20\n")
    (user / "jupyter_server_config.json").write_text(json.dumps(
        {"TfVgpu": {"placement_policy": "binpack", "queue_timeout": 22.0}}))
    launcher = TfVgpu(config=load_jupyter_config())
    server = server_settings()
    assert (server.placement_policy, server.queue_timeout, server.lease_ttl) == ("binpack", 22.0, 20)
    assert (launcher.placement_policy, launcher.queue_timeout, launcher.lease_ttl) == ("binpack", 22.0, 20)


def test_directory_order_and_conf_d_below_the_main_files(config_dirs):
    user, extra = config_dirs  # JUPYTER_CONFIG_PATH comes before the user's directory in jupyter_config_path()
    (user / "jupyter_server_config.json").write_text(json.dumps(
        {"TfVgpu": {"default_qos": "high", "idle_warning": 5.0, "refresh_interval": 2.0}}))
    (extra / "jupyter_server_config.py").write_text("c.TfVgpu.default_qos = 'low'\n")
    confd = extra / "jupyter_server_config.d"
    confd.mkdir()
    (confd / "site.json").write_text(json.dumps({"TfVgpu": {"idle_warning": 9.0, "default_qos": "critical",
                                                            "refresh_interval": 3.0, "lease_ttl": 30}}))
    launcher = TfVgpu(config=load_jupyter_config())
    server = server_settings()
    assert server.default_qos == launcher.default_qos == "low"  # the more specific directory wins
    assert launcher.idle_warning == 5.0  # a main file, even of a less specific directory, over conf.d
    assert launcher.refresh_interval == 2.0
    assert launcher.lease_ttl == 30  # conf.d still counts where nothing else sets it
