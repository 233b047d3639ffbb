"""`kycstream`: the composition root. Each command loads its role's settings and starts that role."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from processors import logs
from processors.errors import KycstreamError
from processors.settings import CONFIG_ENV, ProcessorSettings, S, Settings

if TYPE_CHECKING:
    from processors.avro.codec import RecordType

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="KYC webhooks into Kafka, normalized.",
)
topics_app = typer.Typer(no_args_is_help=True, help="Manage kycstream's Kafka topics.")
app.add_typer(topics_app, name="topics")

EXIT_DATAERR = 65  # sysexits.h: the input data was incorrect
DEV_CONFIG = Path("deploy/kycstream.dev.yaml")

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help=f"YAML config file (default: $KYCSTREAM_CONFIG, else {DEV_CONFIG} when run from the project).",
    ),
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _config_file(config: Path | None) -> Path | None:
    """--config, else $KYCSTREAM_CONFIG, else the dev config when run from the project: every command
    finds the same file `make run` uses."""
    if config is not None:
        return config
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return DEV_CONFIG if DEV_CONFIG.is_file() else None


def _load(cls: type[S], config: Path | None, **overrides: Any) -> S:
    config = _config_file(config)
    typer.echo(f"config: {config or 'none (defaults and environment)'}", err=True)
    try:
        settings = cls.load(config, **overrides)
    except KycstreamError as exc:
        raise _fail(str(exc)) from exc
    logs.configure(settings.log_level, settings.log_format)
    return settings


def _override(settings: S, **sections: dict[str, Any]) -> S:
    try:
        return settings.with_overrides(**sections)
    except KycstreamError as exc:
        raise _fail(str(exc)) from exc


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
) -> None:
    """Create the five topics with their configs; topics that exist are left as they are."""
    from processors.kafka import topics

    settings = _load(Settings, config)
    if partitions is not None:
        settings = _override(settings, topics={"partitions": partitions})
    try:
        outcome = topics.create_all(settings.kafka, settings.topics)
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
    from processors.kafka.runner import Normalizer

    settings = _load(ProcessorSettings, config)
    if group:
        settings = _override(settings, processor={"group_id": group})
    normalizer = Normalizer(settings)
    _run_until_signalled(normalizer.run, normalizer.metrics.registry, settings.processor.metrics_port)


@app.command()
def reconcile(config: ConfigOpt = None) -> None:
    """Poll provider status APIs for expected verifications that have no final result in time."""
    from processors.kafka.reconciler import Reconciler
    from processors.settings import ReconcileSettings

    settings = _load(ReconcileSettings, config)
    if not any(source.poll for source in settings.sources.values()):
        raise _fail("no source has a `poll:` section (base_url, token): there is nothing to reconcile")
    reconciler = Reconciler(settings)
    _run_until_signalled(reconciler.run, reconciler.metrics.registry, settings.reconcile.metrics_port)


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
    from processors.kafka import embedded
    from processors.settings import ReconcileSettings

    config = _config_file(config)
    reconciled = _load(ReconcileSettings, config)
    polled = sorted(name for name, source in reconciled.sources.items() if source.poll is not None)
    standin = _serve_standin(reconciled) if fake_provider_api else None
    env = dict(os.environ)
    running = None
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        try:
            running = embedded.start("127.0.0.1", broker_port, output=subprocess.DEVNULL)
        except KycstreamError as exc:
            raise _fail(str(exc)) from exc
        env["KAFKA_BOOTSTRAP_SERVERS"] = running.bootstrap_servers
        typer.echo(f"embedded broker on {running.bootstrap_servers}", err=True)
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
        names = ["gateway", "processor", "reconciler"]
        if signalled == signal.SIGINT:  # a terminal's Ctrl-C reached them too: let them finish first
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(c.poll() is None for c in children):
                time.sleep(0.1)
        for child in children:
            if child.poll() is None:
                child.terminate()
        for name, child in zip(names, children, strict=False):
            try:
                code = child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                code = child.wait()
            typer.echo(f"stopped {name} ({_exit_status(code)})", err=True)
        if children:
            typer.echo(_undelivered(config, env), err=True)
        if running is not None:
            running.stop()
            typer.echo("stopped the embedded broker (memory-only: its topics are gone)", err=True)
        if standin is not None:
            standin.should_exit = True


def _exit_status(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit {code}" + (", the Ctrl-C convention" if code == 128 + signal.SIGINT else "")


def _undelivered(config: Path | None, env: dict[str, str]) -> str:
    """What the stopped roles left undelivered: the gateway's spool, raw records not processed yet."""
    from gateway.settings import GatewaySettings
    from gateway.spool import scan
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
    """The local Incode stand-in (processors.standin), at the incode source's poll.base_url."""
    from urllib.parse import urlsplit

    import uvicorn

    from processors.standin import IncodeStandIn

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


def _run_until_signalled(run: Any, registry: Any, metrics_port: int | None) -> None:
    """Serve /metrics, run a role until SIGTERM/SIGINT sets its stop event, report its errors."""
    from prometheus_client import start_http_server

    if metrics_port:
        start_http_server(metrics_port, registry=registry)
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


@app.command()
def replay(
    config: ConfigOpt = None,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Replay the whole raw topic.")] = False,
    since: Annotated[
        datetime | None, typer.Option(help="Replay deliveries received at or after this time (ISO 8601, UTC).")
    ] = None,
    events_topic: Annotated[str | None, typer.Option(help="Write events here instead (a fresh topic).")] = None,
    state_topic: Annotated[str | None, typer.Option(help="Write states here instead (a fresh topic).")] = None,
    dedup_topic: Annotated[
        str | None, typer.Option(help="Dedup changelog to use (fresh with a fresh events or state topic).")
    ] = None,
    dlq_topic: Annotated[
        str | None, typer.Option(help="Dead letters go here instead (fresh with a fresh events topic).")
    ] = None,
) -> None:
    """Rebuild events and state from the raw topic, up to its end as of the start, through the current
    normalizers, then exit.

    Into the live topics only what is missing is emitted (dedup is restored first), and only dead
    letters the DLQ does not hold yet; into fresh topics (--events-topic, --state-topic,
    --dedup-topic, --dlq-topic) everything is rebuilt. Missing targets are created like the topics
    they stand in for, with the raw topic's partition count.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from processors.kafka import replay as replay_

    if from_beginning == (since is not None):
        raise _fail("give exactly one of --from-beginning or --since TIME")
    settings = _load(ProcessorSettings, config)
    live = settings.topics
    targets = {
        k: v
        for k, v in (("events", events_topic), ("state", state_topic), ("dedup", dedup_topic), ("dlq", dlq_topic))
        if v and v != getattr(live, k)
    }
    if targets.keys() & {"events", "state"} and "dedup" not in targets:
        raise _fail(
            f"a fresh --{next(iter(targets.keys() & {'events', 'state'}))}-topic needs a fresh --dedup-topic too: "
            "with the live dedup changelog every event would be recognised as already emitted"
        )
    if "events" in targets and "dlq" not in targets:
        raise _fail(
            "a fresh --events-topic needs a fresh --dlq-topic too: its dead letters would join the ones "
            f"{live.dlq} already holds"
        )
    settings = _override(settings, topics=targets)
    try:
        for name in replay_.ensure_targets(settings.kafka, live, settings.topics):
            typer.echo(f"created {name}", err=True)
        with Progress(
            TextColumn("replaying {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        ) as bar:
            task = bar.add_task(settings.topics.raw, total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=max(done, total))

            tally = replay_.replay(settings, None if from_beginning else _utc(since), progress)
    except KycstreamError as exc:
        raise _fail(str(exc)) from exc
    held = tally["dead_letters_held"]
    typer.echo(
        f"replayed {tally['records']} records of {settings.topics.raw}: "
        f"{tally['events']} events emitted, {tally['duplicates']} already emitted, "
        f"{tally['notices']} notices, {tally['dead_letters']} dead letters"
        + (f" ({held} already in {settings.topics.dlq}, not written again)" if held else ""),
        err=True,
    )


@app.command()
def redrive(
    config: ConfigOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would happen.")] = False,
) -> None:
    """Send the DLQ's records (since the last redrive) back through the current normalizers.

    Those that normalize now return to the raw topic; those that still fail stay, with their new reason.
    """
    from processors.kafka.replay import redrive as run_redrive

    settings = _load(ProcessorSettings, config)
    try:
        tally = run_redrive(settings, dry_run=dry_run)
    except KycstreamError as exc:
        raise _fail(str(exc)) from exc
    verb = "would be" if dry_run else "were"
    typer.echo(f"{tally.pop('redriven', 0)} dead letters {verb} redriven to the raw topic", err=True)
    for reason, count in sorted(tally.items()):
        typer.echo(f"{count} {verb} still failing: {reason.removeprefix('still_failing:')}", err=True)


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


_ROLE_TYPES: dict[str, RecordType] = {
    "raw": "RawDelivery",
    "events": "VerificationEvent",
    "state": "VerificationState",
    "dedup": "DedupRecord",
    "dlq": "DeadLetter",
    "expected": "Expectation",
}


@app.command()
def tail(
    topic: Annotated[
        str,
        typer.Option(help="events, state, dlq, raw, dedup, expected, or the name of any topic of kycstream records."),
    ] = "events",
    config: ConfigOpt = None,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Start at the oldest record.")] = False,
    count: Annotated[
        int | None,
        typer.Option(
            help="Print N records and exit: the last N (or the first N with --from-beginning), "
            "waiting for more if fewer exist."
        ),
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Exit after S seconds without a new record.")] = None,
    key: Annotated[
        str | None, typer.Option(help="Only records with this key, e.g. esign:d208917d (provider:verification_id).")
    ] = None,
) -> None:
    """Decode a topic's records to JSON lines on stdout.

    A topic that is none of the configured ones is decoded by what its records are (the schema
    fingerprint, or the registry's schema id): the topics a replay built, a copy, a backup."""
    from processors.kafka import identify, reader
    from processors.kafka.serde import Codec

    settings = _load(Settings, config)
    role = next((r for r in _ROLE_TYPES if topic in (r, getattr(settings.topics, r))), None)
    name = getattr(settings.topics, role) if role else topic
    kind: RecordType | None = _ROLE_TYPES[role] if role else None
    from processors.kafka import config as kconfig

    codec = Codec(kconfig.schema_registry(settings.kafka))
    wanted = key.encode() if key is not None else None

    def emit(record: reader.Record) -> None:
        nonlocal kind
        if kind is None and record.value:
            kind = identify.record_type(codec, record.value, name)
            if kind is None:
                raise _fail(
                    f"{name} does not hold kycstream records: its record at partition {record.partition} offset "
                    f"{record.offset} is {identify.describe(record.value, bool(settings.kafka.schema_registry_url))}"
                )
        sys.stdout.buffer.write(_render(codec, kind, name, record) + b"\n")
        sys.stdout.flush()

    # The last N matching one key are found by reading everything: "the last N of each partition" may hold none.
    start: reader.Start = "beginning" if from_beginning or (count and key) else (count if count else "end")
    printed = 0
    backlog: deque[reader.Record] = deque(maxlen=count if count and not from_beginning else None)
    catching_up = bool(count) and not from_beginning
    try:
        for item in reader.follow(settings.kafka, name, start, idle_timeout=timeout):
            if isinstance(item, reader.CaughtUp):
                if catching_up:
                    catching_up = False
                    for record in sorted(backlog, key=lambda r: r.timestamp_ms):
                        emit(record)
                        printed += 1
                    backlog.clear()
            elif wanted is not None and item.key != wanted:
                continue
            elif catching_up:
                backlog.append(item)
                continue
            else:
                emit(item)
                printed += 1
            if count is not None and printed >= count:
                return
    except KycstreamError as exc:
        raise _fail(str(exc)) from exc
    except KeyboardInterrupt:
        return


def _render(codec: Any, kind: RecordType | None, topic: str, record: Any) -> bytes:
    from processors.errors import SerdeError

    try:
        value: Any = codec.decode(kind, record.value, topic) if record.value and kind else None
    except SerdeError as exc:
        value = {"_undecodable": str(exc)}
    if kind == "DeadLetter" and isinstance(value, dict):
        try:
            value["original"] = codec.decode("RawDelivery", value["original_value"])
            del value["original_value"]
        except SerdeError:
            pass
    return orjson.dumps(_jsonable(value), option=orjson.OPT_SORT_KEYS)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return value


@app.command()
def normalize(
    file: Annotated[str, typer.Argument(help="The webhook body, or - for standard input.")],
    provider: Annotated[str, typer.Option(help="Provider whose normalizer to use.")],
    header: Annotated[list[str] | None, typer.Option(help="A request header, 'Name: value' (repeatable).")] = None,
) -> None:
    """Normalize one body offline: print the event as JSON (exit 0) or the dead-letter reason (exit 65)."""
    from processors.avro.records import event_to_record
    from processors.model import Notice, RawDelivery, Rejection
    from processors.pipeline import normalize as run_pipeline
    from processors.providers import REGISTRY

    if provider not in REGISTRY:
        raise _fail(f"unknown provider {provider!r}; known: {', '.join(sorted(REGISTRY))}")
    headers: dict[str, str] = {}
    for item in header or []:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise _fail(f"--header {item!r} must be 'Name: value'")
        headers[name.strip().lower()] = value.strip()
    try:
        body = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        raise _fail(f"cannot read {file}: {exc.strerror}") from exc
    delivery = RawDelivery(
        request_id="offline",
        source=provider,
        provider=provider,
        method="POST",
        received_at=datetime.now(UTC),
        body=body,
        headers=headers,
    )
    outcome = run_pipeline(delivery)
    if isinstance(outcome, Rejection):
        typer.echo(f"{outcome.code}: {outcome.detail}", err=True)
        raise typer.Exit(EXIT_DATAERR)
    if isinstance(outcome, Notice):
        typer.echo(f"notice: {outcome.kind} (no event, no dead letter)", err=True)
        return
    sys.stdout.buffer.write(orjson.dumps(_jsonable(event_to_record(outcome)), option=orjson.OPT_SORT_KEYS) + b"\n")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
