"""The roles: broker, topics, gateway, process, reconcile, and `run` (all of them, on the embedded broker)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from processors.cli.common import (
    ConfigOpt,
    _config_file,
    _fail,
    _load,
    _override,
    app,
    topics_app,
)
from processors.errors import KycstreamError
from processors.settings import ProcessorSettings, Settings

if TYPE_CHECKING:
    from processors.kafka.embedded import EmbeddedBroker


@app.command()
def broker(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9092,
) -> None:
    """Run the embedded Kafka-protocol broker (Tansu, memory-only) until Ctrl-C."""
    from processors.kafka import embedded

    try:
        running = embedded.start(host, port, output=None)
    except KycstreamError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"embedded broker ready on {running.bootstrap_servers} (memory-only; Ctrl-C stops it)", err=True)
    _wait_for_signal(lambda: not running.alive())
    running.stop()


@topics_app.command("create")
def topics_create(
    config: ConfigOpt = None,
    partitions: Annotated[int | None, typer.Option(help="Partitions per topic.")] = None,
    allow_single_replica: Annotated[
        bool,
        typer.Option(
            "--allow-single-replica",
            help="Accept topics.replication_factor 1 on a cluster of several brokers: one broker's loss "
            "then loses deliveries already answered 200.",
        ),
    ] = False,
) -> None:
    """Create the six topics with their configs; topics that exist are left as they are. Three replicas
    (two in sync) by default; one on a single-broker cluster such as the embedded broker."""
    from processors.kafka import topics

    settings = _load(Settings, config)
    if partitions is not None:
        settings = _override(settings, topics={"partitions": partitions})
    try:
        outcome = topics.create_all(settings.kafka, settings.topics, allow_single_replica)
    except KycstreamError as exc:
        raise _fail(str(exc)) from exc
    for name, what in outcome.items():
        typer.echo(f"{what:8} {name}")


@app.command()
def gateway(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Override gateway.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override gateway.port.")] = None,
) -> None:
    """Serve the webhook gateway (Starlette on uvicorn)."""
    from gateway.server import serve
    from gateway.settings import GatewaySettings

    settings = _load(GatewaySettings, config)
    server = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    try:
        serve(_override(settings, gateway=server))
    except KycstreamError as exc:
        raise _fail(str(exc)) from exc


@app.command()
def process(
    config: ConfigOpt = None,
    group: Annotated[str | None, typer.Option(help="Override processor.group_id.")] = None,
) -> None:
    """Run the normalizer: raw deliveries in, events and dead letters out. SIGTERM stops it cleanly."""
    from processors import tracing
    from processors.normalizer.runner import Normalizer

    settings = _load(ProcessorSettings, config)
    if group:
        settings = _override(settings, processor={"group_id": group})
    try:
        tracing.setup("kycstream-processor")
        normalizer = Normalizer(settings)  # checks its settings against its clients' limits
    except KycstreamError as exc:
        raise _fail(str(exc)) from exc
    _run_until_signalled(
        normalizer.run, normalizer.metrics.registry, normalizer.health, settings.processor.metrics_port
    )


@app.command()
def reconcile(config: ConfigOpt = None) -> None:
    """Poll provider status APIs for expected verifications that have no final result in time."""
    from processors.reconcile.reconciler import Reconciler
    from processors.settings import ReconcileSettings

    settings = _load(ReconcileSettings, config)
    if not any(source.poll for source in settings.sources.values()):
        raise _fail("no source has a `poll:` section (base_url, token): there is nothing to reconcile")
    reconciler = Reconciler(settings)
    _run_until_signalled(
        reconciler.run, reconciler.metrics.registry, reconciler.health, settings.reconcile.metrics_port
    )


@app.command()
def run(
    config: ConfigOpt = None,
    broker_port: Annotated[int, typer.Option(help="Port of the embedded broker.")] = 9092,
    fake_provider_api: Annotated[
        bool,
        typer.Option(
            "--fake-provider-api",
            help="Serve a local stand-in of Incode's API at the incode source's poll.base_url (development only).",
        ),
    ] = False,
) -> None:
    """Everything at once: embedded broker (unless KAFKA_BOOTSTRAP_SERVERS is set), topics, gateway,
    processor, and the reconciler when a source has API credentials (`poll:`)."""
    from processors.settings import ReconcileSettings

    config = _config_file(config)
    reconciled = _load(ReconcileSettings, config)
    polled = sorted(name for name, source in reconciled.sources.items() if source.poll is not None)
    standin = _serve_standin(reconciled) if fake_provider_api else None
    env = dict(os.environ)
    running = None if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else _start_broker(broker_port, env)
    me = [sys.executable, "-m", "processors.cli"]
    cfg = ["--config", str(config)] if config else []
    children: list[subprocess.Popen[bytes]] = []
    signalled = None
    try:
        subprocess.run([*me, "topics", "create", *cfg], env=env, check=True)
        children = [
            subprocess.Popen([*me, "gateway", *cfg], env=env),
            subprocess.Popen([*me, "process", *cfg], env=env),
        ]
        if polled:
            children.append(subprocess.Popen([*me, "reconcile", *cfg], env=env))
        roles = "gateway, processor" + (f" and reconciler ({', '.join(polled)})" if polled else "")
        typer.echo(f"{roles} started; Ctrl-C stops everything", err=True)
        signalled = _wait_for_signal(lambda: any(c.poll() is not None for c in children))
    except subprocess.CalledProcessError as exc:
        raise _fail("creating topics failed (see above)") from exc
    finally:
        # The roles first (Ctrl-C reached them already: the broker runs in its own session), so they
        # leave a broker that still answers; then what they left behind; the broker last.
        _stop_roles(children, signalled)
        if children:
            typer.echo(_undelivered(config, env), err=True)
        if running is not None:
            running.stop()
            typer.echo("stopped the embedded broker (memory-only: its topics are gone)", err=True)
        if standin is not None:
            standin.should_exit = True


def _start_broker(port: int, env: dict[str, str]) -> EmbeddedBroker:
    """The embedded broker on 127.0.0.1:`port`, its address set in `env` for the roles."""
    from processors.kafka import embedded

    try:
        running = embedded.start("127.0.0.1", port, output=subprocess.DEVNULL)
    except KycstreamError as exc:
        raise _fail(str(exc)) from exc
    env["KAFKA_BOOTSTRAP_SERVERS"] = running.bootstrap_servers
    typer.echo(f"embedded broker on {running.bootstrap_servers}", err=True)
    return running


def _stop_roles(children: list[subprocess.Popen[bytes]], signalled: int | None) -> None:
    """Stop the role processes (gateway, processor, reconciler, in that order) and say how each ended.

    After a Ctrl-C (which reached them too) they get 10 s to finish on their own; then SIGTERM and
    15 s each, then SIGKILL."""
    if signalled == signal.SIGINT:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(c.poll() is None for c in children):
            time.sleep(0.1)
    for child in children:
        if child.poll() is None:
            child.terminate()
    for name, child in zip(("gateway", "processor", "reconciler"), children, strict=False):
        try:
            code = child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            code = child.wait()
        typer.echo(f"stopped {name} ({_exit_status(code)})", err=True)


def _exit_status(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit {code}" + (", the Ctrl-C convention" if code == 128 + signal.SIGINT else "")


def _undelivered(config: Path | None, env: dict[str, str]) -> str:
    """What the stopped roles left undelivered: the gateway's spool, raw records not processed yet."""
    from gateway.settings import GatewaySettings
    from gateway.spool.journal import scan
    from processors.kafka import reader

    try:
        gateway = GatewaySettings.load(config)
        processor = ProcessorSettings.load(config).with_overrides(
            kafka={"bootstrap_servers": env["KAFKA_BOOTSTRAP_SERVERS"]}
        )
        spooled = sum(len(scan(p.read_bytes())[0]) for p in gateway.gateway.spool_dir.glob("segment-*.spool"))
        behind = reader.unprocessed(processor.kafka, processor.processor.group_id, processor.topics.raw, 10)
    except (KycstreamError, OSError) as exc:
        return f"could not check what is undelivered: {exc}"
    left = []
    if spooled:
        left.append(f"{spooled} deliveries in the spool ({gateway.gateway.spool_dir}), forwarded at the next start")
    if behind:
        left.append(f"{behind} raw records not processed yet (the next `kycstream process` takes them)")
    if left:
        return "undelivered: " + "; ".join(left)
    return f"nothing undelivered: the spool is empty and every record of {processor.topics.raw} is processed"


def _serve_standin(settings: Any) -> Any:
    """The local Incode stand-in (processors.reconcile.standin), at the incode source's poll.base_url."""
    from urllib.parse import urlsplit

    import uvicorn

    from processors.reconcile.standin import IncodeStandIn

    source = next((s for s in settings.sources.values() if s.provider == "incode" and s.poll is not None), None)
    if source is None:
        raise _fail("--fake-provider-api needs an incode source with a poll: section (see deploy/kycstream.dev.yaml)")
    url = urlsplit(source.poll.base_url)
    if url.scheme != "http" or url.hostname not in ("127.0.0.1", "localhost") or not url.port:
        raise _fail(f"--fake-provider-api serves only on http://127.0.0.1:<port>, not {source.poll.base_url}")
    creds, login = source.poll.credentials(), source.poll.executive_login
    app_ = IncodeStandIn(creds.token, creds.admin_token, login=login.credentials() if login else None).app()
    server = uvicorn.Server(uvicorn.Config(app_, host=url.hostname, port=url.port, log_config=None))
    threading.Thread(target=server.run, daemon=True).start()  # not the main thread: `run` keeps the signals
    typer.echo(f"stand-in Incode API on {source.poll.base_url} (ids with fail/warn/late pick the score)", err=True)
    return server


def _run_until_signalled(run: Any, registry: Any, health: Any, metrics_port: int | None) -> None:
    """Serve /metrics, /livez and /readyz, run a role until SIGTERM/SIGINT sets its stop event,
    report its errors."""
    from processors import probes

    if metrics_port:
        probes.serve(metrics_port, health, registry)
    stop = _stop_on_signals()
    try:
        run(stop)
    except KycstreamError as exc:
        raise _fail(str(exc)) from exc


def _stop_on_signals() -> threading.Event:
    """An event that SIGTERM or SIGINT (Ctrl-C) sets: every role stops through one."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _wait_for_signal(done: Any) -> int | None:
    """Wait until SIGTERM or SIGINT (returned) or until done() (None)."""
    received: list[int] = []
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    while not stop.is_set() and not done():
        stop.wait(0.2)
    return received[0] if received else None
