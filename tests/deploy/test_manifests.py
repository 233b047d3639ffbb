"""The Kubernetes manifests agree with what the gateway and processor actually serve and accept.

The overlays are rendered as a cluster would receive them, then checked against the application's
own settings classes, routes, metrics and CLI. The last tests run `deploy/check.sh` (what
`make deploy-check` runs) on the real tree and on deliberately broken copies of it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from gateway.app import create_app
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from processors.kafka.runner import ProcessorMetrics
from processors.kafka.topics import specs
from processors.providers import REGISTRY
from processors.settings import KAFKA_ENV, ProcessorSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TOOLS = ROOT / ".venv-deploy" / "bin"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
SOURCES = {"esign", "xendit", "signicat", "incode", "metamap"}
# A placeholder a Secret would hold: a JSON list, and user:password-shaped so basic auth accepts it.
PLACEHOLDER_CREDENTIALS = '["kycstream:placeholder-secret"]'

Doc = dict[str, Any]


def _renderer() -> Callable[[Path], list[str]] | None:
    if shutil.which("kubectl"):
        return lambda d: ["kubectl", "kustomize", str(d)]
    if shutil.which("kustomize"):
        return lambda d: ["kustomize", "build", str(d)]
    python = TOOLS / "python"
    if python.exists() and subprocess.run([python, "-c", "import pykustomize"], capture_output=True).returncode == 0:
        return lambda d: [str(python), str(DEPLOY / "render.py"), str(d)]
    return None


_RENDER = _renderer()
needs_renderer = pytest.mark.skipif(
    _RENDER is None,
    reason="no kustomize renderer: install kubectl, or run `make deploy-check` once (it installs the "
    "pykustomize fallback into .venv-deploy)",
)
needs_tools = pytest.mark.skipif(
    not (TOOLS / "checkov").exists() or not (TOOLS / "kubernetes-validate").exists(),
    reason="the check tools are not installed: run `make deploy-check` once (it creates .venv-deploy)",
)


def render(directory: Path) -> list[Doc]:
    assert _RENDER is not None
    out = subprocess.run(_RENDER(directory), capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    """The resource of `kind` whose name is `name` (or `name-<hash>` for generated ConfigMaps)."""
    found = [
        d
        for d in docs
        if d["kind"] == kind and re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", d["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def container(deployment: Doc) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> list[Doc]:
    if _RENDER is None:
        pytest.skip("no kustomize renderer (see needs_renderer)")
    return render(DEPLOY / "overlays" / request.param)


@pytest.fixture(scope="module")
def strimzi() -> list[Doc]:
    if _RENDER is None:
        pytest.skip("no kustomize renderer (see needs_renderer)")
    return render(DEPLOY / "strimzi" / "topics-users")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in list(os.environ):
        if var.startswith("KYCSTREAM_") or var in KAFKA_ENV:
            monkeypatch.delenv(var)
    return monkeypatch


def _config_file(docs: list[Doc], tmp_path: Path) -> Path:
    """The rendered ConfigMap's kycstream.yaml, as the pod sees it at its --config path."""
    configmap = one(docs, "ConfigMap", "kycstream-config")
    path = tmp_path / "kycstream.yaml"
    path.write_text(configmap["data"]["kycstream.yaml"])
    return path


def _apply_env(monkeypatch: pytest.MonkeyPatch, deployment: Doc) -> dict[str, str]:
    """Set the container's env as the kubelet would, with placeholders for Secret values."""
    env: dict[str, str] = {}
    for item in container(deployment).get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = PLACEHOLDER_CREDENTIALS if ref["name"] == "kycstream-provider-credentials" else "x"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _config_arg(deployment: Doc) -> str:
    args = container(deployment)["args"]
    return str(args[args.index("--config") + 1])


@pytest.fixture
def gateway_settings(overlay: list[Doc], tmp_path: Path, clean_env: pytest.MonkeyPatch) -> GatewaySettings:
    deployment = one(overlay, "Deployment", "kycstream-gateway")
    _apply_env(clean_env, deployment)
    return GatewaySettings.load(_config_file(overlay, tmp_path))


@pytest.fixture
def processor_settings(overlay: list[Doc], tmp_path: Path, clean_env: pytest.MonkeyPatch) -> ProcessorSettings:
    deployment = one(overlay, "Deployment", "kycstream-processor")
    _apply_env(clean_env, deployment)
    return ProcessorSettings.load(_config_file(overlay, tmp_path))


# --- the config and env the pods get validate with the app's own settings ----------------------


def test_gateway_config_and_env_validate(gateway_settings: GatewaySettings, overlay: list[Doc]) -> None:
    gateway_settings.require_sources()
    assert set(gateway_settings.sources) == SOURCES
    assert set(REGISTRY) >= SOURCES
    for name, source in gateway_settings.sources.items():
        assert source.auth.credentials, f"source {name} got no credentials from the Secret"
        assert [c.get_secret_value() for c in source.auth.credentials] == json.loads(PLACEHOLDER_CREDENTIALS)
    kafka = gateway_settings.kafka
    assert (kafka.security_protocol, kafka.sasl_username) == ("SASL_SSL", "kycstream-gateway")
    assert kafka.sasl_password is not None
    assert gateway_settings.gateway.host in {"0.0.0.0", "::"}, "the gateway must listen beyond loopback in a pod"


def test_every_source_has_its_credentials_env(overlay: list[Doc]) -> None:
    config = yaml.safe_load(one(overlay, "ConfigMap", "kycstream-config")["data"]["kycstream.yaml"])
    assert set(config["sources"]) == SOURCES
    for source in config["sources"].values():
        assert "credentials" not in source.get("auth", {}), "credentials belong in the Secret, not the ConfigMap"
    env = {e["name"]: e for e in container(one(overlay, "Deployment", "kycstream-gateway"))["env"]}
    for name in SOURCES:
        ref = env[f"KYCSTREAM_SOURCES__{name.upper()}__AUTH__CREDENTIALS"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "kycstream-provider-credentials", "key": name}


def test_processor_config_and_env_validate(processor_settings: ProcessorSettings) -> None:
    assert processor_settings.kafka.sasl_username == "kycstream-processor"
    assert processor_settings.processor.metrics_port, "the processor's probes and PodMonitor need its metrics port"


def test_no_secret_is_committed(overlay: list[Doc], strimzi: list[Doc]) -> None:
    assert not [d for d in overlay + strimzi if d["kind"] == "Secret"]


# --- probes, ports and args match what the programs serve and accept ----------------------------


def _port(c: Doc, ref: int | str) -> int:
    if isinstance(ref, int):
        return ref
    return next(int(p["containerPort"]) for p in c["ports"] if p["name"] == ref)


def test_gateway_probes_and_ports(overlay: list[Doc], gateway_settings: GatewaySettings) -> None:
    c = container(one(overlay, "Deployment", "kycstream-gateway"))
    assert [p["containerPort"] for p in c["ports"]] == [gateway_settings.gateway.port]
    routes = {r.path for r in create_app(gateway_settings, sink=object()).routes}  # type: ignore[arg-type, attr-defined]
    probes = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in probes.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path and path in routes
        assert _port(c, get["port"]) == gateway_settings.gateway.port

    service = one(overlay, "Service", "kycstream-gateway")
    assert [_port(c, p["targetPort"]) for p in service["spec"]["ports"]] == [gateway_settings.gateway.port]
    ingress = one(overlay, "Ingress", "kycstream-gateway")
    paths = ingress["spec"]["rules"][0]["http"]["paths"]
    assert [p["path"] for p in paths] == ["/webhooks/"] and "/webhooks/{source}" in routes
    assert paths[0]["backend"]["service"]["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_processor_probes_and_ports(overlay: list[Doc], processor_settings: ProcessorSettings) -> None:
    c = container(one(overlay, "Deployment", "kycstream-processor"))
    port = processor_settings.processor.metrics_port
    assert [p["containerPort"] for p in c["ports"]] == [port]
    for probe in ("readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert (get["path"], _port(c, get["port"])) == ("/metrics", port)


def test_pod_monitors_scrape_named_ports(overlay: list[Doc]) -> None:
    for role in ("gateway", "processor"):
        c = container(one(overlay, "Deployment", f"kycstream-{role}"))
        monitor = one(overlay, "PodMonitor", f"kycstream-{role}")
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in {p["name"] for p in c["ports"]} and endpoint["path"] == "/metrics"
        labels = one(overlay, "Deployment", f"kycstream-{role}")["spec"]["template"]["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("role", ["gateway", "processor"])
def test_args_are_real_cli_commands(overlay: list[Doc], role: str) -> None:
    deployment = one(overlay, "Deployment", f"kycstream-{role}")
    args = container(deployment)["args"]
    kycstream = Path(sys.executable).with_name("kycstream")
    done = subprocess.run([kycstream, *args, "--help"], capture_output=True, text=True)
    assert done.returncode == 0, f"`kycstream {' '.join(args)}` is not accepted by the CLI:\n{done.stderr}"
    # --config names the ConfigMap's key where the config volume is mounted.
    config = Path(_config_arg(deployment))
    mounts = {m["name"]: m["mountPath"] for m in container(deployment)["volumeMounts"]}
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == one(overlay, "ConfigMap", "kycstream-config")["metadata"]["name"]
    assert (str(config.parent), config.name) == (mounts["config"], "kycstream.yaml")


def test_dockerfile_entrypoint_is_the_cli() -> None:
    entrypoints = re.findall(r"^ENTRYPOINT (.+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert [json.loads(e) for e in entrypoints] == [["kycstream"]]


def test_graceful_shutdown_covers_the_produce_deadline(overlay: list[Doc], gateway_settings: GatewaySettings) -> None:
    spec = one(overlay, "Deployment", "kycstream-gateway")["spec"]["template"]["spec"]
    command = container(one(overlay, "Deployment", "kycstream-gateway"))["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    deadline = gateway_settings.gateway.produce_timeout_s
    # gateway/server.py: uvicorn drains for int(produce_timeout_s) + 5, then the sink flushes for produce_timeout_s.
    needed = int(command[1]) + int(deadline) + 5 + deadline
    assert spec["terminationGracePeriodSeconds"] >= needed


def test_processor_shutdown_covers_the_flush(overlay: list[Doc], processor_settings: ProcessorSettings) -> None:
    spec = one(overlay, "Deployment", "kycstream-processor")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > processor_settings.processor.flush_timeout_s


def _nginx_size(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", value).groups()  # type: ignore[union-attr]
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit.lower()]


def test_ingress_body_limit_matches_the_gateway(overlay: list[Doc], gateway_settings: GatewaySettings) -> None:
    annotations = one(overlay, "Ingress", "kycstream-gateway")["metadata"]["annotations"]
    limit = _nginx_size(annotations["nginx.ingress.kubernetes.io/proxy-body-size"])
    largest = max(
        [gateway_settings.gateway.max_body_bytes] + [s.max_body_bytes or 0 for s in gateway_settings.sources.values()]
    )
    assert limit == largest


def test_gateway_scales_and_survives_disruption(overlay: list[Doc]) -> None:
    hpa = one(overlay, "HorizontalPodAutoscaler", "kycstream-gateway")["spec"]
    assert hpa["minReplicas"] >= 2 and hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert one(overlay, "Deployment", "kycstream-gateway")["spec"]["replicas"] >= 2
    assert one(overlay, "PodDisruptionBudget", "kycstream-gateway")["spec"]["minAvailable"] < hpa["minReplicas"]


def test_processor_replicas_within_partitions(overlay: list[Doc], processor_settings: ProcessorSettings) -> None:
    replicas = one(overlay, "Deployment", "kycstream-processor")["spec"]["replicas"]
    assert 1 <= replicas <= processor_settings.topics.partitions


def test_pods_are_locked_down(overlay: list[Doc]) -> None:
    for d in overlay:
        if d["kind"] != "Deployment":
            continue
        pod = d["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True
        sc = container(d)["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"]["type"] == "RuntimeDefault"
        resources = container(d)["resources"]
        assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
    assert one(overlay, "ServiceAccount", "kycstream")["automountServiceAccountToken"] is False


# --- Strimzi topics and users agree with the app --------------------------------------------------


def test_kafka_topics_match_the_app(strimzi: list[Doc], processor_settings: ProcessorSettings) -> None:
    topics = {d["spec"]["topicName"]: d["spec"] for d in strimzi if d["kind"] == "KafkaTopic"}
    wanted = specs(processor_settings.topics)
    assert set(topics) == {s.name for s in wanted}
    for s in wanted:
        topic = topics[s.name]
        assert (topic["partitions"], topic["replicas"]) == (s.partitions, s.replication_factor) == (s.partitions, 3)
        assert {k: str(v) for k, v in topic["config"].items()} == s.config
        assert s.config["min.insync.replicas"] == "2"
    policies = {s.role: s.config["cleanup.policy"] for s in wanted}
    assert policies == {
        "raw": "delete",
        "events": "delete",
        "state": "compact",
        "dedup": "compact",
        "dlq": "delete",
        "expected": "compact",
    }


def _acls(strimzi: list[Doc], user: str) -> dict[tuple[str, str], set[str]]:
    spec = one(strimzi, "KafkaUser", user)["spec"]
    return {(a["resource"]["type"], a["resource"]["name"]): set(a["operations"]) for a in spec["authorization"]["acls"]}


def test_kafka_users_are_least_privilege(
    strimzi: list[Doc], overlay: list[Doc], processor_settings: ProcessorSettings
) -> None:
    t = processor_settings.topics
    gateway = _acls(strimzi, "kycstream-gateway")
    assert {name for (kind, name), ops in gateway.items() if ops - {"Describe"}} == {t.raw}
    assert gateway[("topic", t.raw)] == {"Write", "Describe"}
    processor = _acls(strimzi, "kycstream-processor")
    assert processor[("group", processor_settings.processor.group_id)] >= {"Read"}
    assert processor[("topic", t.raw)] == {"Read", "Describe"}
    for topic in (t.events, t.state, t.dedup, t.dlq):
        assert "Write" in processor[("topic", topic)]
    assert all(kind in {"topic", "group"} for kind, _ in processor)
    for role in ("gateway", "processor"):
        env = {e["name"]: e for e in container(one(overlay, "Deployment", f"kycstream-{role}"))["env"]}
        assert env["KAFKA_SASL_USERNAME"]["value"] == f"kycstream-{role}"


# --- alerts and dashboard use metrics that exist ---------------------------------------------------


def _exported_names() -> set[str]:
    gateway, processor = GatewayMetrics(), ProcessorMetrics()
    gateway.requests.labels("s", "200").inc()
    gateway.produce_seconds.observe(0.01)
    processor.events.labels("p", "APPROVED").inc()
    processor.dead_letters.labels("p", "r").inc()
    text = (generate_latest(gateway.registry) + generate_latest(processor.registry)).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_alerts_and_dashboard_use_exported_metrics() -> None:
    exported = _exported_names()
    rules = yaml.safe_load((DEPLOY / "monitoring" / "prometheusrule.yaml").read_text())
    exprs = [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    dashboard = json.loads((DEPLOY / "monitoring" / "kycstream-dashboard.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(kycstream_[a-z_]+)", e)}
    assert used and used <= exported, f"not exported by the app: {used - exported}"
    assert any("kafka_consumergroup_lag" in e for e in exprs)
    for needed in ("kycstream_dead_letters_total", "kycstream_gateway_requests_total"):
        assert any(needed in r["expr"] for g in rules["spec"]["groups"] for r in g["rules"])


# --- make deploy-check passes here and fails on broken manifests -----------------------------------


def _check(deploy_dir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEPLOY_DIR=str(deploy_dir), K8S_VERSIONS="1.30.0")
    return subprocess.run(["bash", str(DEPLOY / "check.sh")], capture_output=True, text=True, env=env, timeout=240)


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Iterator[Path]:
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("__pycache__"))
    yield copy


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


BREAKAGES: dict[str, tuple[str, str, str, str]] = {
    # name: (file under deploy/, old text, new text, the step that must report it)
    "schema": (
        "base/processor-deployment.yaml",
        "      serviceAccountName: kycstream\n",
        "      serviceAccountName: kycstream\n      restartPolicyy: Always\n",
        "kubernetes-validate",
    ),
    "security": (
        "base/gateway-deployment.yaml",
        "            readOnlyRootFilesystem: true\n",
        "            readOnlyRootFilesystem: false\n",
        "checkov kubernetes",
    ),
    "render": ("base/kustomization.yaml", "  - pdb.yaml\n", "  - pdbs.yaml\n", "render overlays/"),
    "lint": ("base/gateway-service.yaml", "  type: ClusterIP\n", "  type: ClusterIP   \n", "yamllint"),
}


@needs_tools
@needs_renderer
def test_deploy_check_passes() -> None:
    done = _check(DEPLOY)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deploy-check passed" in done.stdout


@needs_tools
@needs_renderer
@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_deploy_check_fails_on_a_broken_manifest(deploy_copy: Path, breakage: str) -> None:
    file, old, new, step = BREAKAGES[breakage]
    _edit(deploy_copy / file, old, new)
    done = _check(deploy_copy)
    assert done.returncode != 0, done.stdout
    assert "deploy-check FAILED" in done.stderr and f"FAILED: {step}" in done.stderr, done.stderr
