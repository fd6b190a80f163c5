"""deploy/ and binder/ checked against the code, as far as this machine allows (no cluster, no systemd).

Every YAML file parses; every `c.TfVgpu.X` (Python config, JSON/YAML config, docs code blocks) names
a real trait of tf_jupyter.config.TfVgpu with a value it accepts; every worker flag and TOML key is a
real WorkerConfig field / `tf-jupyter worker` flag; every container and unit runs our CLI.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from traitlets.config import Config

from tf_jupyter.cli import build_parser as jupyter_cli_parser
from tf_jupyter.config import TfVgpu
from tf_remoting.worker.cli import build_parser as worker_parser
from tf_remoting.worker.config import WorkerConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), *(ROOT / "binder").glob("*.yml")])
DOCS = sorted((ROOT / "docs").glob("*.md"))
TRAITS = set(TfVgpu.class_trait_names(config=True))
WORKER_FIELDS = set(WorkerConfig.__dataclass_fields__)


def _load_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kube_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted((DEPLOY / "kubernetes").glob("*.yaml")) for d in _load_all(p)
            if isinstance(d, dict) and "kind" in d and "apiVersion" in d]


def _kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in _kube_objects() if d["kind"] == kind]


def _parse_worker_argv(argv: list[str]) -> Any:
    """argv after `tf-jupyter worker`, parsed by the worker's own parser; fails on unknown flags."""
    parser = worker_parser()
    parser.exit_on_error = False
    args, unknown = parser.parse_known_args(argv)
    assert not unknown, f"not flags of `tf-jupyter worker`: {unknown}"
    return args


def _check_worker_args(argv: list[str]) -> WorkerConfig:
    """The flags make a WorkerConfig that validates (the same path as `tf-jupyter worker`)."""
    from tf_remoting.worker.cli import config_from_args

    args = _parse_worker_argv(argv)
    if args.config and not Path(args.config).exists():
        args.config = None  # a path on the target host; its content is checked separately
    config = config_from_args(args)
    return config


# ------------------------------------------------------------------------------------------ parsing

@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    docs = _load_all(path)
    assert docs, f"{path} is empty"


def test_grafana_dashboard_is_json() -> None:
    json.loads((DEPLOY / "monitoring" / "grafana-dashboard.json").read_text())


def test_there_is_something_to_check() -> None:
    kinds = {d["kind"] for _, d in _kube_objects()}
    assert {"DaemonSet", "Service", "Secret", "ServiceMonitor", "Namespace"} <= kinds, kinds


# ------------------------------------------------------------------------------------------ c.TfVgpu

def _python_tfvgpu_assignments(text: str) -> list[tuple[str, str]]:
    """(name, value source) of every `c.TfVgpu.NAME = VALUE` line (also in comments)."""
    return re.findall(r"c\.TfVgpu\.([A-Za-z_]\w*)\s*=\s*([^\n#]+)", text)


def _assert_tfvgpu(settings: dict[str, Any], where: str) -> None:
    unknown = set(settings) - TRAITS
    assert not unknown, f"{where}: not c.TfVgpu traits: {sorted(unknown)} (known: {sorted(TRAITS)})"
    TfVgpu(config=Config({"TfVgpu": settings}))  # traitlets validates every value


def _files_mentioning_tfvgpu() -> list[Path]:
    candidates = [*DEPLOY.rglob("*"), *(ROOT / "binder").rglob("*"), *DOCS, ROOT / "README.md"]
    return sorted(p for p in candidates if p.is_file() and "TfVgpu" in p.read_text(errors="replace"))


def test_every_python_style_tfvgpu_setting_is_a_trait() -> None:
    checked = 0
    for path in _files_mentioning_tfvgpu():
        for name, value in _python_tfvgpu_assignments(path.read_text()):
            assert name in TRAITS, f"{path.relative_to(ROOT)}: c.TfVgpu.{name} is not a trait of TfVgpu"
            try:
                literal = eval(value.strip().rstrip(","), {"__builtins__": {}}, {})
            except Exception:  # an illustration like `c.TfVgpu.token_file` = ... with a placeholder
                continue
            _assert_tfvgpu({name: literal}, str(path.relative_to(ROOT)))
            checked += 1
    assert checked >= 5


def test_jupyterhub_values_configure_real_traits() -> None:
    values = yaml.safe_load((DEPLOY / "jupyterhub" / "values.yaml").read_text())
    files = values["singleuser"]["extraFiles"]
    settings = {}
    for spec in files.values():
        # tf_jupyter reads c.TfVgpu from jupyter_server_config.json and jupyter_server_config.d/*.json
        # in a Jupyter config directory (tf_jupyter.config.load_jupyter_config)
        mount = Path(spec["mountPath"])
        if mount.parent.name == "jupyter_server_config.d":
            assert mount.suffix == ".json", mount
            mount = mount.parent
        else:
            assert mount.name == "jupyter_server_config.json", mount
        assert str(mount.parent) in ("/etc/jupyter", "/usr/local/etc/jupyter")
        settings.update(spec["data"]["TfVgpu"])
    _assert_tfvgpu(settings, "deploy/jupyterhub/values.yaml")
    assert settings["embedded_worker"] == "off"
    service = _kind("Service")[0]
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert settings["workers_dns"] == f"{name}.{namespace}.svc.cluster.local:{port}"
    # No token made by hand: each server sends its own hub token, and the workers ask the hub.
    assert settings["token_source"] == "hub" and "token_file" not in settings
    assert "tf-jupyter-token" not in json.dumps(values["singleuser"].get("storage", {}))
    # Z2JH >= 2.0 keeps single-user pods off private IPs: an egress rule lets them reach the workers'
    # gRPC port, selected by the labels the manifests really put on the namespace and the worker pods.
    (namespace,) = _kind("Namespace")
    (daemonset,) = _kind("DaemonSet")
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    rules = values["singleuser"]["networkPolicy"]["egress"]
    reaching = []
    for rule in rules:
        ports = {(p["port"], p.get("protocol", "TCP")) for p in rule.get("ports", [])}
        for peer in rule.get("to", []):
            ns_labels = peer["namespaceSelector"]["matchLabels"]
            assert ns_labels.items() <= namespace["metadata"]["labels"].items(), ns_labels
            assert namespace["metadata"]["name"] == service["metadata"]["namespace"]
            assert peer["podSelector"]["matchLabels"].items() <= pod_labels.items()
            reaching.append(ports)
    container_port = next(p["containerPort"] for p in daemonset["spec"]["template"]["spec"]["containers"][0]["ports"]
                          if p["name"] == "grpc")
    assert any(ports == {(container_port, "TCP")} for ports in reaching), reaching


def test_workers_ask_the_hub_that_gives_the_servers_tokens_their_scope() -> None:
    """The workers' --hub-api-url is the Z2JH hub Service's API; the scope they require is defined in
    the hub, held by the users and given to the servers' tokens; the hub's NetworkPolicy admits the
    worker pods on the API's port."""
    values = yaml.safe_load((DEPLOY / "jupyterhub" / "values.yaml").read_text())
    (daemonset,) = _kind("DaemonSet")
    (namespace,) = _kind("Namespace")
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    config = _check_worker_args(container["args"])
    match = re.fullmatch(r"http://hub\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)/hub/api", config.hub_api_url)
    assert match, config.hub_api_url  # Z2JH's hub Service is "hub", its API port 8081
    assert int(match.group(2)) == 8081
    scope = config.hub_required_scope
    hub_config = values["hub"]["config"]
    assert scope in hub_config["JupyterHub"]["custom_scopes"]
    assert scope in hub_config["Spawner"]["server_token_scopes"]
    assert "users:activity!user" in hub_config["Spawner"]["server_token_scopes"]
    assert not any(s.startswith("access:servers") for s in hub_config["Spawner"]["server_token_scopes"])
    assert scope in values["hub"]["loadRoles"]["user"]["scopes"]
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    admitted = False
    for rule in values["hub"]["networkPolicy"]["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        for peer in rule["from"]:
            if (peer["namespaceSelector"]["matchLabels"].items() <= namespace["metadata"]["labels"].items()
                    and peer["podSelector"]["matchLabels"].items() <= pod_labels.items()):
                admitted = admitted or ports == {8081}
    assert admitted, values["hub"]["networkPolicy"]


def test_binder_postbuild_writes_real_traits_and_worker_flags() -> None:
    text = (ROOT / "binder" / "postBuild").read_text()
    block = re.search(r"<<JSON\n(.*?)\nJSON\n", text, re.S)
    assert block, "postBuild writes its Jupyter config as a JSON heredoc"
    data = json.loads(block.group(1).replace("$VRAM", "2Gi"))
    _assert_tfvgpu(data["TfVgpu"], "binder/postBuild")
    config = _check_worker_args(data["TfVgpu"]["embedded_worker_args"])
    assert config.backend == "host" and config.host_vram == "2Gi"
    for line in re.findall(r"^tf-jupyter profiles add .*?(?<!\\)$", text.replace("\\\n", " "), re.M):
        args = shlex.split(line)[1:]
        jupyter_cli_parser().parse_args(args)


def test_json_config_blocks_in_docs_use_real_traits() -> None:
    for path in DOCS:
        for block in re.findall(r"```json\n(.*?)```", path.read_text(), re.S):
            data = json.loads(block)
            if "TfVgpu" in data:
                _assert_tfvgpu(data["TfVgpu"], str(path.relative_to(ROOT)))


# ------------------------------------------------------------------------------------------ the worker

def test_worker_toml_keys_are_worker_config_fields() -> None:
    path = DEPLOY / "systemd" / "worker.toml"
    import tomllib

    data = tomllib.loads(path.read_text())["worker"]
    assert set(data) <= WORKER_FIELDS, sorted(set(data) - WORKER_FIELDS)
    config = WorkerConfig.from_file(path)
    config.validate()
    assert config.state_dir == "/var/lib/tf-jupyter"
    assert not config.shares_filesystem


def test_systemd_unit_runs_our_cli_with_hardening() -> None:
    path = DEPLOY / "systemd" / "tf-jupyter-worker.service"
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    text = path.read_text()
    unit.read_string(text)
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "tf-jupyter" and argv[1] == "worker", argv
    args = _parse_worker_argv(argv[2:])
    assert args.config == "/etc/tf-jupyter/worker.toml"
    # the StateDirectory is where the example config keeps its state
    state_dir = WorkerConfig.from_file(DEPLOY / "systemd" / "worker.toml").state_dir
    assert state_dir == "/var/lib/" + service["StateDirectory"]
    assert service["ConfigurationDirectory"] == Path(args.config).parent.name
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "Delegate": "yes", "KillMode": "process",
                       "DevicePolicy": "closed"}.items():
        assert service.get(key) == value, f"{key}={service.get(key)}"
    assert service["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    allowed = re.findall(r"^DeviceAllow=(\S+) rw$", text, re.M)
    assert "/dev/nvidiactl" in allowed and any(a.startswith("char-nvidia") for a in allowed)
    assert service.get("PrivateDevices", "no") == "no"  # it would hide /dev/nvidia*


def test_daemonset_runs_our_cli_with_real_flags() -> None:
    (daemonset,) = _kind("DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["tf-jupyter", "worker"]
    config = _check_worker_args(container["args"])
    # every port the worker serves is declared, and the Service exposes the gRPC one
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config.listen == f"0.0.0.0:{ports['grpc']}"
    assert config.metrics_port == ports["metrics"] and config.metrics_addr == "0.0.0.0"
    assert not config.shares_filesystem and config.backend == "nvml"
    # the token file lives in the mounted Secret, under one of its keys
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    token_volume = next(n for n, path in mounts.items() if config.token_file.startswith(path + "/"))
    secret_name = volumes[token_volume]["secret"]["secretName"]
    secret = next(s for s in _kind("Secret") if s["metadata"]["name"] == secret_name)
    assert Path(config.token_file).name in secret["stringData"]
    assert mounts["state"] == config.state_dir
    # GPU scheduling
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["hostPID"] is True
    assert "nvidia.com/gpu" in container["resources"]["limits"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["nodeSelector"]
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= daemonset["spec"]["template"]["metadata"][
        "labels"].items()


def _entries(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_token_secret_is_in_the_worker_token_format() -> None:
    from tf_remoting.worker.auth import parse_token_file

    worker_tables = []
    for secret in _kind("Secret"):
        for text in secret["stringData"].values():
            worker_tables.append(parse_token_file(text))  # raises on a malformed line
            # Kernels run in the worker's container and can read its token file: digests only.
            for words in _entries(text):
                assert words[-1].startswith("sha256:"), f"a plain token in the workers' Secret: {words[0]}"
    assert worker_tables


def test_systemd_worker_token_file_is_documented_with_digests() -> None:
    """Wherever a worker's token file is shown (worker.toml, the guide), it is made of digest lines."""
    toml_text = (DEPLOY / "systemd" / "worker.toml").read_text()
    assert "sha256:" in toml_text
    guide = (ROOT / "docs" / "admin-guide.md").read_text()
    section = guide[guide.index("### 2. Tokens"):guide.index("### 3.")]
    # The guide makes the worker's line with the CLI's digest command, and says why.
    line = next(ln for ln in section.splitlines() if "/etc/tf-jupyter/tokens" in ln and "tee" in ln)
    argv = shlex.split(line.split("|")[0])
    assert argv[:3] == ["tf-jupyter", "worker", "token"]
    from tf_remoting.worker.cli import build_token_parser

    args = build_token_parser().parse_args(argv[3:])
    assert args.action == "new" and args.client_file
    assert "kernels" in section and "digest" in section


def test_headless_service_selects_the_workers() -> None:
    (service,) = _kind("Service")
    (daemonset,) = _kind("DaemonSet")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= daemonset["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["port"] == 50051
    container_ports = {p["name"] for p in daemonset["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in ports.values()} <= container_ports


def test_service_monitor_and_scrape_config_use_the_metrics_port_and_job() -> None:
    (monitor,) = _kind("ServiceMonitor")
    (service,) = _kind("Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    # job label = the value of the Service label named by jobLabel = what the alert rules expect
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "tf-jupyter-worker"
    scrape = yaml.safe_load((DEPLOY / "kubernetes" / "prometheus-scrape.yaml").read_text())
    assert any(job["job_name"] == "tf-jupyter-worker" for job in scrape["scrape_configs"])


def test_kustomization_lists_existing_files() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        assert (DEPLOY / "kubernetes" / name).is_file(), name


def test_worker_command_lines_in_docs_use_real_flags() -> None:
    """`tf-jupyter worker ...` and `tf-jupyter pool ...` lines in docs/ parse with our parsers."""
    checked = 0
    for path in [*DOCS, ROOT / "README.md"]:
        text = path.read_text().replace("\\\n", " ")
        for line in re.findall(r"^\s*(?:\$ )?(?:sudo (?:-u \S+ )?)?(?:\S*/)?tf-jupyter (worker|pool) ([^\n`|>]*)$",
                               text, re.M):
            command, rest = line
            if "..." in rest or "…" in rest:  # an abbreviation, not a command line
                continue
            args = shlex.split(rest.split(" #")[0])
            if command == "worker" and args[:1] == ["token"]:
                from tf_remoting.worker.cli import build_token_parser

                build_token_parser().parse_args(args[1:])
            elif command == "worker":
                _parse_worker_argv(args)
            else:
                jupyter_cli_parser().parse_args(["pool", *args])
            checked += 1
    assert checked >= 3


def test_worker_help_lists_every_field() -> None:
    """The flags the manifests rely on come from WorkerConfig; `tf-jupyter worker --help` shows them."""
    out = subprocess.run([sys.executable, "-m", "tf_remoting", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for name in WORKER_FIELDS:
        assert "--" + name.replace("_", "-") in out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    """No unknown directive or bad value (the ExecStart binary exists only on a GPU host)."""
    unit = tmp_path / "tf-jupyter-worker.service"
    shutil.copy(DEPLOY / "systemd" / unit.name, unit)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line.strip() and "is not executable" not in line]
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_renders_the_manifests(tmp_path: Path) -> None:
    """`kubectl kustomize deploy/kubernetes` (offline: no cluster) builds exactly the listed objects."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none")}
    result = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "kubernetes")], capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    sources = [d for name in kustomization["resources"] for d in _load_all(DEPLOY / "kubernetes" / name)]
    assert sorted(d["kind"] for d in rendered) == sorted(d["kind"] for d in sources)
    assert {d["kind"] for d in rendered} == {"Namespace", "Secret", "Service", "DaemonSet", "NetworkPolicy"}
    namespace = kustomization["namespace"]
    by_key = {(d["kind"], d["metadata"]["name"]): d for d in rendered}
    for source in sources:
        out = by_key[(source["kind"], source["metadata"]["name"])]
        if source["kind"] != "Namespace":
            assert out["metadata"]["namespace"] == namespace
        assert out == source, f"kustomize changed {source['kind']} {source['metadata']['name']}"
