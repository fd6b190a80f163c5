"""What of a client's environment reaches its vGPU kernel (tf_jupyter.kernel_env)."""

from __future__ import annotations

import pytest

from tf_jupyter.kernel_env import kernel_env, worker_is_local

CLIENT = {"PATH": "/venv/bin:/usr/bin", "MY_DATA": "/data", "MY_FLAG": "1", "AWS_SECRET_ACCESS_KEY": "s",
          "LC_TIME": "C", "JPY_SESSION_NAME": "a.ipynb", "TF_VGPU_HANDOFF": "{}", "TF_VGPU_CLIENT_TOKEN": "t",
          "TF_VGPU_CLIENT_TOKEN_FILE": "/t", "TF_VGPU_PARENT_PID": "1"}


@pytest.mark.parametrize("address", ["127.0.0.1:7000", "localhost:7000", "[::1]:7000", "unix:/run/w.sock"])
def test_a_worker_on_this_machine_gets_the_whole_environment_less_the_launchers_secrets(address):
    assert worker_is_local(address)
    assert kernel_env(CLIENT, address) == {k: v for k, v in CLIENT.items() if not k.startswith("TF_VGPU_")}


def test_a_remote_worker_gets_the_allow_list_and_the_kernelspecs_env_only():
    assert not worker_is_local("gpu-1.example:7000")
    assert kernel_env(CLIENT, "gpu-1.example:7000") == {"LC_TIME": "C", "JPY_SESSION_NAME": "a.ipynb"}
    assert kernel_env(CLIENT, "10.0.0.5:7000", ["MY_*"], spec_env=["PATH"]) == {
        "MY_DATA": "/data", "MY_FLAG": "1", "PATH": "/venv/bin:/usr/bin"}
    assert "TF_VGPU_CLIENT_TOKEN" not in kernel_env(CLIENT, "10.0.0.5:7000", ["*"])
