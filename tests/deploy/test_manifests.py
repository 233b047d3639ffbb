"""The Kubernetes manifests agree with what the gateway, processor and reconciler serve and accept.

The overlays are rendered as a cluster would receive them, then checked against the application's
own settings classes, routes, metrics and CLI. The last tests run `deploy/check.sh` (what
`make deploy-check` runs) on the real tree and on deliberately broken copies of it.
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, get_args

import pytest
import yaml
from prometheus_client import generate_latest

from gateway.app import create_app
from gateway.expectations import ExpectationsEndpoint
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.spool.forwarder import SpoolForwarder
from processors.errors import ConfigError
from processors.kafka import access
from processors.kafka.topics import specs
from processors.normalizer.metrics import ProcessorMetrics
from processors.probes import LIVENESS_PATH, READINESS_PATH
from processors.providers import REGISTRY
from processors.reconcile import reconciler as reconciler_module
from processors.reconcile.fetcher import fetcher_sources
from processors.reconcile.polling import Verdict
from processors.reconcile.reconciler import ReconcileMetrics
from processors.secretfile import read_lines
from processors.settings import KAFKA_ENV, ProcessorSettings, ReconcileSettings, Settings, TopicSettings
from tests.unit.test_gateway_app import Sink

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TOOLS = ROOT / ".venv-deploy" / "bin"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
SOURCES = {"esign", "xendit", "signicat", "incode", "metamap"}
ROLES = ("gateway", "processor", "reconciler")
# The gateway is a StatefulSet: each pod keeps its own spool volume (gateway.spool_dir) across restarts.
KINDS = {"gateway": "StatefulSet", "processor": "Deployment", "reconciler": "Deployment"}
# What a mounted Secret's file would hold (one secret per line): user:password-shaped for the
# webhook secrets so basic auth accepts it, one plain string for the others.
PLACEHOLDER_CREDENTIALS = "kycstream:placeholder-secret"
PLACEHOLDER_API_KEYS = "placeholder-api-key"
SECRET_PLACEHOLDERS = {
    "kycstream-provider-credentials": PLACEHOLDER_CREDENTIALS,
    "kycstream-expectations-api-keys": PLACEHOLDER_API_KEYS,
}
PLACEHOLDER_SECRET = "placeholder-secret"
# The Secrets each role mounts as files (least privilege: a webhook-facing gateway never holds a
# provider API credential, the processor no provider secret at all). None reaches a role by env.
ROLE_SECRETS = {
    "gateway": {"kycstream-kafka-gateway", "kycstream-provider-credentials", "kycstream-expectations-api-keys"},
    "processor": {"kycstream-kafka-processor"},
    "reconciler": {"kycstream-kafka-reconciler", "kycstream-provider-poll-tokens"},
}
SHARED_SECRETS = {"kycstream-kafka-ca"}  # the cluster CA's certificate, not a secret: every role

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


def workload(docs: list[Doc], role: str) -> Doc:
    """The role's Deployment or StatefulSet (KINDS), `kycstream-<role>`."""
    return one(docs, KINDS[role], f"kycstream-{role}")


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


def _clear_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("KYCSTREAM_") or var in KAFKA_ENV:
            monkeypatch.delenv(var)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    _clear_env(monkeypatch)
    return monkeypatch


Mounts = dict[str, str]  # a Secret volume's mount path in the pod -> where a test put its files


def _relocate(text: str, mounts: Mounts) -> str:
    """`text` with the pod's Secret file paths replaced by the test's (see `_mount_secrets`)."""
    for mount_path, here in mounts.items():
        text = text.replace(f"{mount_path}/", f"{here}/")
    return text


def _config_file(docs: list[Doc], tmp_path: Path, mounts: Mounts | None = None) -> Path:
    """The rendered ConfigMap's kycstream.yaml, as the pod sees it at its --config path (the
    Secret files it names at `mounts`)."""
    configmap = one(docs, "ConfigMap", "kycstream-config")
    path = tmp_path / "kycstream.yaml"
    path.write_text(_relocate(configmap["data"]["kycstream.yaml"], mounts or {}))
    return path


def _secret_volumes(deployment: Doc) -> dict[str, dict[str, Any]]:
    """The container's Secret volumes by mount path: each volume's `secret:` source."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = container(deployment).get("volumeMounts", [])
    return {m["mountPath"]: volumes[m["name"]]["secret"] for m in mounts if "secret" in volumes.get(m["name"], {})}


def _secret_file(deployment: Doc, path: str) -> tuple[str, str] | None:
    """The (Secret, key) the kubelet projects at `path` in the container, if any."""
    for mount_path, secret in _secret_volumes(deployment).items():
        for item in secret.get("items", []):
            if f"{mount_path}/{item['path']}" == path:
                return secret["secretName"], item["key"]
    return None


def _mount_secrets(deployment: Doc, root: Path, skip: frozenset[str] = frozenset()) -> Mounts:
    """Placeholder files where the kubelet would project the container's Secrets (but those named
    in `skip`: as if absent), under `root`."""
    mounts: Mounts = {}
    for mount_path, secret in _secret_volumes(deployment).items():
        here = root / "pod" / mount_path.lstrip("/")
        here.mkdir(parents=True, exist_ok=True)
        mounts[mount_path] = str(here)
        if secret["secretName"] in skip:
            continue
        for item in secret["items"]:
            (here / item["path"]).write_text(SECRET_PLACEHOLDERS.get(secret["secretName"], PLACEHOLDER_SECRET) + "\n")
    return mounts


def _env(deployment: Doc, skip: frozenset[str] = frozenset(), mounts: Mounts | None = None) -> dict[str, str]:
    """The container's env as the kubelet would set it, Secret file paths at `mounts`."""
    env: dict[str, str] = {}
    for item in container(deployment).get("env", []):
        if item["name"] in skip:
            continue
        assert "valueFrom" not in item, f"{item['name']}: Secrets are mounted as files, not given as env"
        env[item["name"]] = _relocate(item["value"], mounts or {})
    return env


def _apply_env(
    monkeypatch: pytest.MonkeyPatch, deployment: Doc, skip: frozenset[str] = frozenset(), mounts: Mounts | None = None
) -> dict[str, str]:
    """Replace this process's kycstream/Kafka env with the container's (see `_env`)."""
    _clear_env(monkeypatch)
    env = _env(deployment, skip, mounts)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _secret_refs(deployment: Doc) -> dict[str, dict[str, Any]]:
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(deployment).get("env", []) if "valueFrom" in e}


S = TypeVar("S", bound=Settings)


def _load(cls: type[S], deployment: Doc, docs: list[Doc], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S:
    """The role's settings from the rendered ConfigMap and its container's env, its Secrets mounted."""
    mounts = _mount_secrets(deployment, tmp_path)
    _apply_env(monkeypatch, deployment, mounts=mounts)
    return cls.load(_config_file(docs, tmp_path, mounts))


def _config_arg(deployment: Doc) -> str:
    args = container(deployment)["args"]
    return str(args[args.index("--config") + 1])


@pytest.fixture
def gateway_settings(overlay: list[Doc], tmp_path: Path, clean_env: pytest.MonkeyPatch) -> GatewaySettings:
    return _load(GatewaySettings, workload(overlay, "gateway"), overlay, tmp_path, clean_env)


@pytest.fixture
def processor_settings(overlay: list[Doc], tmp_path: Path, clean_env: pytest.MonkeyPatch) -> ProcessorSettings:
    return _load(ProcessorSettings, workload(overlay, "processor"), overlay, tmp_path, clean_env)


@pytest.fixture
def reconcile_settings(overlay: list[Doc], tmp_path: Path, clean_env: pytest.MonkeyPatch) -> ReconcileSettings:
    return _load(ReconcileSettings, workload(overlay, "reconciler"), overlay, tmp_path, clean_env)


def _polled(config_text: str) -> set[str]:
    """The sources of the ConfigMap's kycstream.yaml that have a `poll:` section."""
    return {name for name, source in yaml.safe_load(config_text)["sources"].items() if "poll" in source}


# --- the config and env the pods get validate with the app's own settings ----------------------


def _expectations_on(settings: GatewaySettings) -> bool:
    return ExpectationsEndpoint(settings, sink=object(), clock=lambda: datetime.now(UTC)).enabled  # type: ignore[arg-type]


def test_gateway_config_and_env_validate(gateway_settings: GatewaySettings, overlay: list[Doc]) -> None:
    gateway_settings.require_sources()
    assert set(gateway_settings.sources) == SOURCES
    assert set(REGISTRY) >= SOURCES
    for name, source in gateway_settings.sources.items():
        assert not source.auth.credentials and source.auth.credentials_file is not None, name
        assert read_lines(source.auth.credentials_file) == (PLACEHOLDER_CREDENTIALS,), f"{name}: not the Secret's file"
    kafka = gateway_settings.kafka
    assert (kafka.security_protocol, kafka.sasl_username) == ("SASL_SSL", "kycstream-gateway")
    assert kafka.sasl_password is not None and kafka.sasl_password.get_secret_value() == PLACEHOLDER_SECRET
    assert gateway_settings.gateway.host in {"0.0.0.0", "::"}, "the gateway must listen beyond loopback in a pod"
    # The shared config's poll sections are dropped: the gateway neither needs nor holds their credentials.
    assert all(source.poll is None for source in gateway_settings.sources.values())
    keys_file = gateway_settings.gateway.expectations_api_keys_file
    assert not gateway_settings.gateway.expectations_api_keys and keys_file is not None
    assert read_lines(keys_file) == (PLACEHOLDER_API_KEYS,)
    assert _expectations_on(gateway_settings)


def test_expectations_api_keys_secret_is_optional(
    overlay: list[Doc], tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """Without the Secret the gateway still takes webhooks; only POST /expectations/ is off (404)."""
    deployment = workload(overlay, "gateway")
    keys_file = yaml.safe_load(_config_file(overlay, tmp_path).read_text())["gateway"]["expectations_api_keys_file"]
    assert _secret_file(deployment, keys_file) == ("kycstream-expectations-api-keys", "keys")
    volumes = {s["secretName"]: s for s in _secret_volumes(deployment).values()}
    assert volumes["kycstream-expectations-api-keys"]["optional"] is True, "without it the pod waits for the Secret"
    mounts = _mount_secrets(deployment, tmp_path, skip=frozenset({"kycstream-expectations-api-keys"}))
    _apply_env(clean_env, deployment, mounts=mounts)
    settings = GatewaySettings.load(_config_file(overlay, tmp_path, mounts))
    settings.require_sources()
    assert not _expectations_on(settings)


def test_every_source_has_its_credentials_file(overlay: list[Doc]) -> None:
    config = yaml.safe_load(one(overlay, "ConfigMap", "kycstream-config")["data"]["kycstream.yaml"])
    assert set(config["sources"]) == SOURCES
    gateway = workload(overlay, "gateway")
    for name, source in config["sources"].items():
        assert "credentials" not in source.get("auth", {}), "credentials belong in the Secret, not the ConfigMap"
        path = source["auth"]["credentials_file"]
        assert _secret_file(gateway, path) == ("kycstream-provider-credentials", name), f"{name}: {path} not mounted"


# Where each polled source's API credential comes from: (setting under `poll`, key of kycstream-provider-poll-tokens).
POLL_CREDENTIALS = {
    "esign": [("token_file", "esign")],
    "xendit": [("token_file", "xendit")],
    # The executive login's password: Incode's executive token, for Fetch Scores, is logged in for.
    "incode": [("token_file", "incode"), ("executive_login.password_file", "incode-password")],
    # Their APIs take short-lived OAuth2 tokens: client credentials (docs/providers.md, "Provider API credentials").
    "signicat": [("oauth2.client_secret_file", "signicat")],
    "metamap": [("oauth2.client_secret_file", "metamap")],
}
TOKEN_URLS = {
    "signicat": "https://api.signicat.com/auth/open/connect/token",
    "metamap": "https://api.getmati.com/oauth",
}


def test_every_polled_source_has_its_credential_file_in_the_reconciler_only(overlay: list[Doc]) -> None:
    text = one(overlay, "ConfigMap", "kycstream-config")["data"]["kycstream.yaml"]
    polled = _polled(text)
    assert polled == SOURCES == set(POLL_CREDENTIALS), "every provider has a status API: poll them all"
    reconciler = workload(overlay, "reconciler")
    sources = yaml.safe_load(text)["sources"]
    for name, source in sources.items():
        poll = source["poll"]
        assert not {"token", "admin_token"} & set(poll), f"{name}: credentials belong in the Secret, not the ConfigMap"
        assert "client_secret" not in poll.get("oauth2", {}), f"{name}: the client secret belongs in the Secret"
        assert "password" not in poll.get("executive_login", {}), f"{name}: the password belongs in the Secret"
        for setting, key in POLL_CREDENTIALS[name]:
            section, _, field = setting.rpartition(".")
            path = (poll[section] if section else poll)[field]
            assert _secret_file(reconciler, path) == ("kycstream-provider-poll-tokens", key), f"{name}.{setting}"
        if name in TOKEN_URLS:
            assert poll["oauth2"]["token_url"] == TOKEN_URLS[name] and "token_file" not in poll
    assert sources["signicat"]["poll"]["oauth2"]["scopes"] == ["signicat-api"]
    # The gateway drops each `sources.*.poll` of the shared config (it parses them otherwise).
    gateway = {e["name"]: e for e in container(workload(overlay, "gateway"))["env"]}
    dropped = {var: item.get("value") for var, item in gateway.items() if var.endswith("__POLL")}
    assert dropped == {f"KYCSTREAM_SOURCES__{name.upper()}__POLL": "null" for name in polled}
    for role in ("gateway", "processor"):
        env = container(workload(overlay, role))["env"]
        assert not [e for e in env if "__POLL__" in e["name"]], f"the {role} must not get a poll setting or token"


def test_each_role_gets_only_its_secrets_as_files(overlay: list[Doc]) -> None:
    for role, allowed in ROLE_SECRETS.items():
        deployment = workload(overlay, role)
        c = container(deployment)
        assert not _secret_refs(deployment) and "envFrom" not in c, f"{role}: a Secret by env (CKV_K8S_35)"
        volumes = _secret_volumes(deployment)
        assert {s["secretName"] for s in volumes.values()} == allowed | SHARED_SECRETS, role
        mounts = {m["mountPath"]: m for m in c["volumeMounts"] if m["mountPath"] in volumes}
        for path, mount in mounts.items():
            # subPath mounts are never updated by the kubelet: a rotated secret would not arrive.
            assert mount.get("readOnly") is True and "subPath" not in mount, f"{role}: {path}"
            # Keys listed: a missing key stops the pod at its mount, not a webhook or a poll later.
            assert volumes[path].get("items"), f"{role}: {path} projects every key of its Secret"
        # The Kafka password: the role's own KafkaUser's Secret, as a file read at start.
        env = _env(deployment)
        assert "KAFKA_SASL_PASSWORD" not in env
        assert _secret_file(deployment, env["KAFKA_SASL_PASSWORD_FILE"]) == (f"kycstream-kafka-{role}", "password")


def test_processor_config_and_env_validate(processor_settings: ProcessorSettings) -> None:
    assert processor_settings.kafka.sasl_username == "kycstream-processor"
    assert processor_settings.processor.metrics_port, "the processor's probes and PodMonitor need its metrics port"


def test_reconciler_config_and_env_validate(reconcile_settings: ReconcileSettings) -> None:
    assert reconcile_settings.kafka.sasl_username == "kycstream-reconciler"
    assert reconcile_settings.kafka.sasl_password is not None
    assert reconcile_settings.kafka.sasl_password.get_secret_value() == PLACEHOLDER_SECRET
    assert reconcile_settings.reconcile.metrics_port, "the reconciler's probes and PodMonitor need its metrics port"
    # `kycstream reconcile` refuses to start when no source has a poll section.
    polled = {name: s.poll for name, s in reconcile_settings.sources.items() if s.poll is not None}
    assert set(polled) == SOURCES
    for name, poll in polled.items():
        if poll.oauth2 is not None:
            assert poll.oauth2.client_secret_file is not None, f"{name}: the client secret must come from the Secret"
            assert read_lines(poll.oauth2.client_secret_file) == (PLACEHOLDER_SECRET,)
            assert poll.oauth2.token_url.startswith("https://")
        else:
            assert poll.credentials().token == PLACEHOLDER_SECRET, f"{name}: the token must come from the Secret"
        assert poll.base_url.startswith("https://"), f"{name}: the NetworkPolicy opens 443 only"
        assert reconcile_settings.sources[name].provider in REGISTRY
    # What the reconciler checks at start: Fetch Scores needs Incode's executive token (its login: a file).
    assert set(fetcher_sources(reconcile_settings)) == {"incode"}
    login = polled["incode"].executive_login
    assert login is not None and login.credentials()[1] == PLACEHOLDER_SECRET


def _reconcile(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KYCSTREAM_") and k not in KAFKA_ENV} | env
    kycstream = Path(sys.executable).with_name("kycstream")
    return subprocess.run(
        [kycstream, "reconcile", "--config", str(config)], capture_output=True, text=True, env=env, timeout=60
    )


def test_a_missing_poll_credential_stops_the_reconciler_with_a_clear_error(overlay: list[Doc], tmp_path: Path) -> None:
    """Through the real CLI: the message names the setting (a missing Secret key stops the pod
    before: its items are listed, see test_each_role_gets_only_its_secrets_as_files)."""
    deployment = workload(overlay, "reconciler")
    mounts = _mount_secrets(deployment, tmp_path)
    config = _config_file(overlay, tmp_path, mounts)
    doc = yaml.safe_load(config.read_text())
    del doc["sources"]["xendit"]["poll"]["token_file"]
    config.write_text(yaml.safe_dump(doc))
    done = _reconcile(config, _env(deployment, mounts=mounts))
    assert done.returncode == 2, done.stderr
    assert "sources.xendit.poll.token: Field required" in done.stderr
    assert "KYCSTREAM_SOURCES__XENDIT__POLL__TOKEN" in done.stderr
    assert PLACEHOLDER_SECRET not in done.stdout + done.stderr
    # The Kafka password's file, read at start, is named by its variable.
    mounts = _mount_secrets(deployment, tmp_path / "no-kafka", skip=frozenset({"kycstream-kafka-reconciler"}))
    done = _reconcile(_config_file(overlay, tmp_path, mounts), _env(deployment, mounts=mounts))
    assert done.returncode == 2, done.stderr
    assert "KAFKA_SASL_PASSWORD_FILE=" in done.stderr and "mount it or fix the path" in done.stderr


def test_the_gateway_does_not_depend_on_the_poll_sections(
    overlay: list[Doc], tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """Why the gateway's env drops `poll`: it would parse the reconciler's sections otherwise, and a
    mistake in one would stop the webhook gateway."""
    deployment = workload(overlay, "gateway")
    mounts = _mount_secrets(deployment, tmp_path)
    config = _config_file(overlay, tmp_path, mounts)
    doc = yaml.safe_load(config.read_text())
    del doc["sources"]["esign"]["poll"]["token_file"]
    config.write_text(yaml.safe_dump(doc))
    _apply_env(clean_env, deployment, mounts=mounts)
    assert GatewaySettings.load(config).sources["esign"].poll is None
    _apply_env(clean_env, deployment, skip=frozenset({"KYCSTREAM_SOURCES__ESIGN__POLL"}), mounts=mounts)
    with pytest.raises(ConfigError, match=r"sources\.esign\.poll\.token: Field required"):
        GatewaySettings.load(config)


def test_no_secret_is_committed(overlay: list[Doc], strimzi: list[Doc]) -> None:
    assert not [d for d in overlay + strimzi if d["kind"] == "Secret"]


# --- probes, ports and args match what the programs serve and accept ----------------------------


def _port(c: Doc, ref: int | str) -> int:
    if isinstance(ref, int):
        return ref
    return next(int(p["containerPort"]) for p in c["ports"] if p["name"] == ref)


def test_gateway_probes_and_ports(overlay: list[Doc], gateway_settings: GatewaySettings) -> None:
    c = container(workload(overlay, "gateway"))
    assert [p["containerPort"] for p in c["ports"]] == [gateway_settings.gateway.port]
    routes = create_app(gateway_settings, sink=Sink()).paths
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
    # POST /expectations/ is for internal callers: served through the ClusterIP Service only.
    assert "/expectations/{source}" in routes and service["spec"]["type"] == "ClusterIP"
    assert not [p for p in paths if "/expectations/".startswith(p["path"]) or p["path"].startswith("/expectations")]


def _worker_ports(processor: ProcessorSettings, reconcile: ReconcileSettings) -> dict[str, int | None]:
    return {"processor": processor.processor.metrics_port, "reconciler": reconcile.reconcile.metrics_port}


def test_worker_probes_and_ports(
    overlay: list[Doc], processor_settings: ProcessorSettings, reconcile_settings: ReconcileSettings
) -> None:
    for role, port in _worker_ports(processor_settings, reconcile_settings).items():
        c = container(one(overlay, "Deployment", f"kycstream-{role}"))
        assert [p["containerPort"] for p in c["ports"]] == [port], role
        for probe, path in (("readinessProbe", READINESS_PATH), ("livenessProbe", LIVENESS_PATH)):
            get = c[probe]["httpGet"]
            assert (get["path"], _port(c, get["port"])) == (path, port), role


def test_pod_monitors_scrape_named_ports(overlay: list[Doc]) -> None:
    for role in ROLES:
        c = container(workload(overlay, role))
        monitor = one(overlay, "PodMonitor", f"kycstream-{role}")
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in {p["name"] for p in c["ports"]} and endpoint["path"] == "/metrics"
        labels = workload(overlay, role)["spec"]["template"]["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("role", ROLES)
def test_args_are_real_cli_commands(overlay: list[Doc], role: str) -> None:
    deployment = workload(overlay, role)
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
    spec = workload(overlay, "gateway")["spec"]["template"]["spec"]
    command = container(workload(overlay, "gateway"))["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    deadline = gateway_settings.gateway.produce_timeout_s
    # gateway/server.py: uvicorn drains for int(produce_timeout_s) + 5, then the sink flushes for produce_timeout_s.
    needed = int(command[1]) + int(deadline) + 5 + deadline
    if gateway_settings.spooling:
        # Then SpoolForwarder.stop: it waits for the round in progress (joined for its timeout_s + 5)
        # and forwards the spool for gateway.spool.drain_on_exit_s (a pod removed on scale-in).
        round_in_progress = inspect.signature(SpoolForwarder).parameters["timeout_s"].default + 5
        needed += round_in_progress + gateway_settings.gateway.spool.drain_on_exit_s
    assert spec["terminationGracePeriodSeconds"] >= needed


def test_processor_shutdown_covers_the_flush(overlay: list[Doc], processor_settings: ProcessorSettings) -> None:
    spec = one(overlay, "Deployment", "kycstream-processor")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > processor_settings.processor.flush_timeout_s


def test_reconciler_shutdown_covers_a_poll_and_the_flush(
    overlay: list[Doc], reconcile_settings: ReconcileSettings
) -> None:
    spec = one(overlay, "Deployment", "kycstream-reconciler")["spec"]["template"]["spec"]
    # SIGTERM is seen between ticks: the slowest poll (every try timing out), then producer.flush(30).
    slowest = max(s.poll.max_attempts * s.poll.timeout_s for s in reconcile_settings.sources.values() if s.poll)
    assert spec["terminationGracePeriodSeconds"] >= slowest + 30


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
    gateway = workload(overlay, "gateway")
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "kycstream-gateway"}
    assert gateway["spec"]["replicas"] >= 2
    pdb = one(overlay, "PodDisruptionBudget", "kycstream-gateway")["spec"]
    assert pdb["minAvailable"] < hpa["minReplicas"]
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()


def _quantity(value: str) -> int:
    """Bytes in a Kubernetes quantity: 2Gi, 1500M, 1073741824."""
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", value).groups()  # type: ignore[union-attr]
    scale = {None: 1, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}
    scale |= {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}
    return int(number) * scale[unit]


def test_gateway_spool_is_on_a_volume_of_each_pod(overlay: list[Doc], gateway_settings: GatewaySettings) -> None:
    """A spooled delivery was answered 200: gateway.spool_dir must outlive the pod, and hold max_bytes."""
    assert "signicat" in gateway_settings.spooling, "Signicat Paper and Connect send one callback, never retried"
    gateway = workload(overlay, "gateway")
    pod = gateway["spec"]["template"]["spec"]
    spool_dir = str(gateway_settings.gateway.spool_dir)
    mounts = [m for m in container(gateway)["volumeMounts"] if m["mountPath"] == spool_dir]
    assert len(mounts) == 1 and not mounts[0].get("readOnly") and "subPath" not in mounts[0]
    # A claim per pod from the StatefulSet's template, not a pod volume (emptyDir dies with the pod).
    assert mounts[0]["name"] not in {v["name"] for v in pod["volumes"]}
    claims = {c["metadata"]["name"]: c["spec"] for c in gateway["spec"]["volumeClaimTemplates"]}
    claim = claims[mounts[0]["name"]]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    # Headroom over max_bytes: the filesystem's own share (ext4 reserves 5 % for root) and records in flight.
    assert _quantity(claim["resources"]["requests"]["storage"]) >= 1.25 * gateway_settings.gateway.spool.max_bytes
    # Scale-in keeps the claim: what a removed pod could not forward waits for that pod to return.
    assert gateway["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenScaled": "Retain", "whenDeleted": "Retain"}
    assert pod["securityContext"]["fsGroup"] == container(gateway)["securityContext"]["runAsGroup"]
    headless = one(overlay, "Service", gateway["spec"]["serviceName"])["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["selector"].items() <= gateway["spec"]["template"]["metadata"]["labels"].items()


def test_processor_stores_are_on_a_disk_volume_that_outlives_container_restarts(
    overlay: list[Doc], processor_settings: ProcessorSettings
) -> None:
    """Stores on disk are bounded in memory by settings; their directory is an emptyDir on the node's
    disk (a restarted container reads only the changelogs' tail), not tmpfs (counted as memory)."""
    p = processor_settings.processor
    assert (p.dedup_store, p.state_store) == ("rocksdb", "rocksdb")
    processor = workload(overlay, "processor")
    pod = processor["spec"]["template"]["spec"]
    mounts = [m for m in container(processor)["volumeMounts"] if m["mountPath"] == str(p.state_dir)]
    assert len(mounts) == 1 and not mounts[0].get("readOnly") and "subPath" not in mounts[0]
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[0]["name"])
    assert "medium" not in volume["emptyDir"], "on disk: a tmpfs would count against the memory limit"
    assert _quantity(volume["emptyDir"]["sizeLimit"]) >= 2**30, "bounded, and room for millions of keys"
    limits = container(processor)["resources"]["limits"]
    # RocksDB's cache and write buffers fit the memory limit beside the process itself (~150 MB).
    assert (p.store_block_cache_mb + p.store_write_buffer_mb) * 2**20 + 300 * 2**20 <= _quantity(limits["memory"])


def test_processor_replicas_within_partitions(overlay: list[Doc], processor_settings: ProcessorSettings) -> None:
    replicas = one(overlay, "Deployment", "kycstream-processor")["spec"]["replicas"]
    assert 1 <= replicas <= processor_settings.topics.partitions


def test_reconciler_replicas_within_partitions(overlay: list[Doc], reconcile_settings: ReconcileSettings) -> None:
    replicas = one(overlay, "Deployment", "kycstream-reconciler")["spec"]["replicas"]
    assert 1 <= replicas <= reconcile_settings.topics.partitions
    pdb = one(overlay, "PodDisruptionBudget", "kycstream-reconciler")["spec"]
    assert pdb == {"maxUnavailable": 1, "selector": pdb["selector"]}, "a single reconciler must stay drainable"


PRIVATE = ["10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "169.254.169.254", "fd00::1", "fe80::1"]


def _admits(block: Doc, address: str) -> bool:
    ip = ipaddress.ip_address(address)
    cidr = ipaddress.ip_network(block["cidr"])
    if ip.version != cidr.version or ip not in cidr:
        return False
    return not any(ip in ipaddress.ip_network(e) for e in block.get("except", []) if ip.version == cidr.version)


def test_network_policies_admit_each_roles_traffic_only(
    overlay: list[Doc],
    gateway_settings: GatewaySettings,
    processor_settings: ProcessorSettings,
    reconcile_settings: ReconcileSettings,
) -> None:
    served = {"gateway": gateway_settings.gateway.port} | _worker_ports(processor_settings, reconcile_settings)
    assert one(overlay, "NetworkPolicy", "kycstream-default-deny")["spec"]["podSelector"] == {}
    for role, port in served.items():
        policy = one(overlay, "NetworkPolicy", f"kycstream-{role}")["spec"]
        labels = workload(overlay, role)["spec"]["template"]["metadata"]["labels"]
        assert policy["podSelector"]["matchLabels"].items() <= labels.items()
        assert {p["port"] for rule in policy["ingress"] for p in rule["ports"]} == {port}, role
        egress = policy["egress"]
        assert any(p["port"] == 9093 for rule in egress for p in rule["ports"]), f"{role} must reach Kafka"
        blocks = [peer["ipBlock"] for rule in egress for peer in rule["to"] if "ipBlock" in peer]
        if role != "reconciler":
            assert not blocks, f"only the reconciler calls out of the cluster, not the {role}"
            continue
        # The providers' status APIs: HTTPS anywhere public, never the cluster or the metadata endpoint.
        internet = [rule for rule in egress if any("ipBlock" in peer for peer in rule["to"])]
        assert len(internet) == 1 and internet[0]["ports"] == [{"port": 443, "protocol": "TCP"}]
        assert any(_admits(b, "203.0.113.10") for b in blocks) and any(_admits(b, "2001:db8::1") for b in blocks)
        assert not [a for a in PRIVATE if any(_admits(b, a) for b in blocks)]
    # Internal callers of /expectations/ reach the gateway only from namespaces labelled for it.
    peers = [
        peer for rule in one(overlay, "NetworkPolicy", "kycstream-gateway")["spec"]["ingress"] for peer in rule["from"]
    ]
    assert {"namespaceSelector": {"matchLabels": {"kycstream.io/expectations-client": "true"}}} in peers


def test_pods_are_locked_down(overlay: list[Doc]) -> None:
    for d in overlay:
        if d["kind"] not in KINDS.values():
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


def _acls(user: Doc) -> list[tuple[str, str, str, tuple[str, ...]]]:
    return sorted(
        (a["resource"]["type"], a["resource"]["name"], a["resource"]["patternType"], tuple(sorted(a["operations"])))
        for a in user["spec"]["authorization"]["acls"]
    )


def _reconciler_groups(settings: ReconcileSettings, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The consumer groups the reconciler's code really joins (its Kafka clients, recorded)."""
    confs: list[dict[str, Any]] = []
    import processors.kafka.producer as producer_module
    import processors.reconcile.tables as tables_module

    clients = ((reconciler_module, "Consumer"), (tables_module, "Consumer"), (producer_module, "Producer"))
    for module, client in clients:
        monkeypatch.setattr(module, client, lambda conf, confs=confs: confs.append(conf))
    reconciler_module.Reconciler(settings)
    return {conf["group.id"] for conf in confs if "group.id" in conf}


def test_kafka_users_are_the_access_table(
    strimzi: list[Doc],
    overlay: list[Doc],
    processor_settings: ProcessorSettings,
    reconcile_settings: ReconcileSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """users.yaml says exactly what processors/kafka/access.py declares for the deployed names (what
    the roles really use is checked by tests/integration/test_access.py)."""
    t = processor_settings.topics
    assert reconcile_settings.topics == t
    table = access.table(t, processor_settings.processor, reconcile_settings.reconcile)
    users = {d["metadata"]["name"]: d for d in strimzi if d["kind"] == "KafkaUser"}
    assert set(users) == {f"kycstream-{role}" for role in (*ROLES, "operator")}, "`topics` has none: Strimzi creates"
    for name, user in users.items():
        declared = {"spec": {"authorization": {"acls": access.to_strimzi(table[name.removeprefix("kycstream-")])}}}
        assert _acls(user) == _acls(declared), f"{name} differs from processors/kafka/access.py"
    gateway = access.from_strimzi(users["kycstream-gateway"]["spec"]["authorization"]["acls"])
    # /readyz checks that every topic exists: Kafka hides those the user may not describe.
    assert all(access.allowed(gateway, "topic", s.name, "Describe") for s in specs(t))
    assert not any(access.allowed(gateway, "topic", s.name, "Read") for s in specs(t))
    processor = access.from_strimzi(users["kycstream-processor"]["spec"]["authorization"]["acls"])
    assert access.allowed(processor, "topic", t.events, "Read"), "at_least_once reads events back on assignment"
    assert any(g.resource == "transactionalId" for g in processor), "exactly_once"
    assert not access.allowed(processor, "topic", t.expected, "Describe")
    reconciler = access.from_strimzi(users["kycstream-reconciler"]["spec"]["authorization"]["acls"])
    groups = _reconciler_groups(reconcile_settings, monkeypatch)
    assert reconcile_settings.reconcile.group_id in groups and len(groups) == 3
    assert all(access.allowed(reconciler, "group", group, "Describe") for group in groups)
    for role in ROLES:
        deployment = workload(overlay, role)
        env = {e["name"]: e for e in container(deployment)["env"]}
        assert env["KAFKA_SASL_USERNAME"]["value"] == f"kycstream-{role}"
        password = _secret_file(deployment, env["KAFKA_SASL_PASSWORD_FILE"]["value"])
        assert password == (f"kycstream-kafka-{role}", "password")


PREFIX_CONFIGMAP = """apiVersion: v1
kind: ConfigMap
metadata:
  name: kycstream-topic-prefix
  annotations:
    config.kubernetes.io/local-config: "true"
data:
  prefix: prod
"""


@needs_renderer
def test_one_topic_prefix_renames_every_topic_kafkatopic_and_acl(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    """An environment with deploy/components/topic-prefix: the app's topic names, the KafkaTopics and
    the KafkaUsers' topic ACLs all carry the prefix, and the ACLs are still access.py's, exactly."""
    env = tmp_path / "env"
    env.mkdir()
    up = os.path.relpath(DEPLOY, env)
    (env / "prefix.yaml").write_text(PREFIX_CONFIGMAP)
    (env / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": ["prefix.yaml", f"{up}/strimzi/topics-users", f"{up}/overlays/prod"],
                "components": [f"{up}/components/topic-prefix"],
            }
        )
    )
    docs = render(env)
    assert not [d for d in docs if d["metadata"]["name"] == "kycstream-topic-prefix"], "local-config: not applied"
    settings = {
        role: _load(cls, workload(docs, role), docs, tmp_path / role, clean_env)
        for role, cls in (
            ("gateway", GatewaySettings),
            ("processor", ProcessorSettings),
            ("reconciler", ReconcileSettings),
        )
    }
    t = settings["processor"].topics
    assert t.prefix == "prod." and settings["gateway"].topics == settings["reconciler"].topics == t
    names = {s.name for s in specs(t)}
    assert names == {f"prod.{s.name}" for s in specs(TopicSettings())}

    topics = [d for d in docs if d["kind"] == "KafkaTopic"]
    assert {d["spec"]["topicName"] for d in topics} == names
    assert all(d["metadata"]["name"] == d["spec"]["topicName"].replace(".", "-") for d in topics)

    processor, reconciler = settings["processor"], settings["reconciler"]
    assert isinstance(processor, ProcessorSettings) and isinstance(reconciler, ReconcileSettings)
    table = access.table(t, processor.processor, reconciler.reconcile)
    users = {d["metadata"]["name"]: d for d in docs if d["kind"] == "KafkaUser"}
    assert len(users) == 4
    for name, user in users.items():
        declared = {"spec": {"authorization": {"acls": access.to_strimzi(table[name.removeprefix("kycstream-")])}}}
        assert _acls(user) == _acls(declared), f"{name}: its ACLs are not access.py's for the prefixed topics"
        topic_acls = [
            a["resource"]["name"] for a in user["spec"]["authorization"]["acls"] if a["resource"]["type"] == "topic"
        ]
        assert topic_acls and all(n.startswith("prod.kyc.") for n in topic_acls)


# --- alerts and dashboard use metrics that exist ---------------------------------------------------


def _exported_names() -> set[str]:
    gateway, processor, reconciler = GatewayMetrics(), ProcessorMetrics(), ReconcileMetrics()
    gateway.requests.labels("s", "200").inc()
    gateway.produce_seconds.observe(0.01)
    gateway.spooled.labels("s").inc()
    processor.events.labels("p", "APPROVED").inc()
    processor.dead_letters.labels("p", "r").inc()
    reconciler.polls.labels("p", "result").inc()
    reconciler.fetches.labels("p", "result").inc()
    reconciler.token_requests.labels("p", "ok").inc()
    reconciler.open.set(1)
    processor.consumer_lag.labels("g", "t", "0").set(0)
    reconciler.consumer_lag.labels("g-fetch", "t", "0").set(0)
    registries = (gateway.registry, processor.registry, reconciler.registry)
    text = b"".join(generate_latest(r) for r in registries).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def _alert_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "monitoring" / "prometheusrule.yaml").read_text())
    return [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "monitoring" / "kycstream-dashboard.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_alerts_and_dashboard_use_exported_metrics() -> None:
    exported = _exported_names()
    alerts, panels = _alert_exprs(), _dashboard_exprs()
    used = {m for e in alerts + panels for m in re.findall(r"\b(kycstream_[a-z_]+)", e)}
    assert used and used <= exported, f"not exported by the app: {used - exported}"
    # Lag is kycstream's own, per group: no alert or panel names a group (processor.group_id is configurable).
    lag = [e for e in alerts + panels if "kycstream_consumer_lag" in e]
    assert lag and all("group" in e and "kycstream-normalizer" not in e for e in lag)
    assert not any("kafka_consumergroup_lag" in e or "consumergroup" in e for e in alerts + panels)
    for needed in (
        "kycstream_dead_letters_total",
        "kycstream_gateway_requests_total",
        "kycstream_polls_total",
        "kycstream_expectations_open",
        "kycstream_gateway_spool_oldest_age_seconds",
        "kycstream_gateway_spool_max_bytes",
        "kycstream_gateway_spool_damaged_bytes_total",
    ):
        assert any(needed in e for e in alerts), f"no alert on {needed}"
    near_full = r"kycstream_gateway_spool_bytes / \(kycstream_gateway_spool_max_bytes > 0\)\) > 0\.8"
    assert any(re.search(near_full, e) for e in alerts)
    assert any("kycstream_gateway_spool_records" in e for e in panels)
    assert any(re.search(r"by \(provider, outcome\) \(rate\(kycstream_polls_total", e) for e in panels)
    assert any("kycstream_expectations_open" in e for e in panels)


def _poll_outcomes() -> set[str]:
    """The `outcome` label values the reconciler can export: poll verdicts and its dead-letter reasons."""
    source = Path(reconciler_module.__file__).read_text()
    reasons = set(re.findall(r'self\._dead_letter\(\s*\w+,\s*"([a-z_]+)"', source))
    assert reasons, "could not find the reconciler's dead-letter reasons"
    return set(get_args(Verdict)) | reasons


def test_poll_alerts_match_real_outcomes() -> None:
    outcomes = _poll_outcomes()
    matched: set[str] = set()
    for expr in _alert_exprs():
        for pattern in re.findall(r'kycstream_polls_total\{[^}]*outcome=~"([^"]+)"', expr):
            values = set(pattern.split("|"))
            assert values <= outcomes, f"no such poll outcome: {values - outcomes}"
            matched |= values
    assert matched >= {"unauthorized", "failed", "poll_unauthorized", "poll_expired"}


def _promtool() -> str | None:
    return (
        os.environ.get("PROMTOOL")
        or shutil.which("promtool")
        or next((str(p) for p in [TOOLS / "promtool"] if p.exists()), None)
    )


@pytest.mark.skipif(
    _promtool() is None,
    reason="no promtool: run `make deploy-check` once (it unpacks Debian's prometheus package's promtool into "
    ".venv-deploy), or put promtool on PATH",
)
def test_the_alerts_pass_their_promtool_unit_tests(tmp_path: Path) -> None:
    """monitoring/prometheusrule.test.yaml: the lag alert fires for a group that is not the default one."""
    tests = DEPLOY / "monitoring" / "prometheusrule.test.yaml"
    assert "kycstream-normalizer" not in tests.read_text() and "billing-normalizer" in tests.read_text()
    rules = yaml.safe_load((DEPLOY / "monitoring" / "prometheusrule.yaml").read_text())["spec"]
    (tmp_path / "prometheusrule.rules.yaml").write_text(yaml.safe_dump(rules))
    shutil.copy(tests, tmp_path)
    promtool = _promtool()
    assert promtool is not None
    checked = subprocess.run(
        [promtool, "check", "rules", "prometheusrule.rules.yaml"], cwd=tmp_path, capture_output=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    done = subprocess.run([promtool, "test", "rules", tests.name], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


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
        "base/gateway-statefulset.yaml",
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
