"""The operator's commands: replay, redrive, inspect, tail, normalize; asyncapi and openapi (the contract)."""

from __future__ import annotations

import base64
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from processors.cli.common import (
    EXIT_DATAERR,
    ConfigOpt,
    _fail,
    _load,
    _override,
    app,
)
from processors.errors import KycstreamError
from processors.settings import ProcessorSettings, Settings, TopicSettings

if TYPE_CHECKING:
    from processors.avro.codec import RecordType
    from processors.kafka.reader import Record


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
    while_live: Annotated[
        bool,
        typer.Option(
            "--while-live",
            help="Replay into the live topics although the processors' group has members. Costs: replay "
            "stops at their committed offsets (the rest is theirs), but neither side's dedup learns what the "
            "other writes meanwhile, so a result both handle can become two events (consumers dedupe by "
            "event_id), and a state replay computed can land after a newer one they wrote. Prefer stopping "
            "the processors.",
        ),
    ] = False,
) -> None:
    """Rebuild events and state from the raw topic, up to its end as of the start, through the current
    normalizers, then exit.

    Into the live topics only what is missing is emitted (dedup is restored first), and only dead
    letters the DLQ does not hold yet; it refuses while the processors' group has members: stop or
    scale them down first. Into fresh topics (--events-topic, --state-topic, --dedup-topic,
    --dlq-topic) everything is rebuilt, processors running or not. Missing targets are created like
    the topics they stand in for, with the raw topic's partition count.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from processors.operate import replay as replay_

    if from_beginning == (since is not None):
        raise _fail("give exactly one of --from-beginning or --since TIME")
    settings = _load(ProcessorSettings, config)
    live = settings.topics
    given = {"events": events_topic, "state": state_topic, "dedup": dedup_topic, "dlq": dlq_topic}
    settings = _override(settings, topics=_fresh_targets(live, given))
    group = settings.processor.group_id
    try:
        if replay_.into_live(live, settings.topics) and not while_live:
            replay_.refuse_while_consumed(settings.kafka, group, live.raw)
        for name in replay_.ensure_targets(settings.kafka, live, settings.topics):
            typer.echo(f"created {name}", err=True)
        with Progress(
            TextColumn("replaying {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        ) as bar:
            task = bar.add_task(settings.topics.raw, total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=max(done, total))

            processed_by = group if while_live and replay_.into_live(live, settings.topics) else None
            tally = replay_.replay(
                settings, None if from_beginning else _utc(since), progress, processed_by=processed_by
            )
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


def _fresh_targets(live: TopicSettings, given: dict[str, str | None]) -> dict[str, str]:
    """The target topics (by role) given that differ from the live ones; refused when a fresh events or
    state topic would be rebuilt against the live dedup changelog, or fresh events against the live DLQ."""
    targets = {role: name for role, name in given.items() if name and name != getattr(live, role)}
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
    return targets


partitions_app = typer.Typer(no_args_is_help=True, help="Change the partition count of kycstream's topics.")
app.add_typer(partitions_app, name="partitions")


@partitions_app.command("grow")
def partitions_grow(
    to: Annotated[int, typer.Option("--to", min=1, help="The new partition count.")],
    config: ConfigOpt = None,
    suffix: Annotated[
        str | None, typer.Option(help="Appended to each co-partitioned topic's name (default: .p<TO>).")
    ] = None,
) -> None:
    """Fill a new co-partitioned set of topics (raw, events, state, dedup, DLQ) with TO partitions from
    the live one: copy the raw topic (placed by murmur2 of the key), replay it into the new events,
    state, dedup and DLQ, carry over states whose deliveries left the raw topic. Run it again to catch
    up; once the processors are stopped it finishes: the processors' group goes on in the new raw topic
    where the replay stopped. Then point topics.* at the new set (printed). See docs/runbook.md.
    """
    from processors.operate import grow as grow_

    settings = _load(ProcessorSettings, config)
    live = settings.topics
    suffix = suffix if suffix is not None else f".p{to}"
    if not suffix:
        raise _fail("--suffix must not be empty: the new topics need names of their own")
    target = grow_.grown(live, to, suffix)
    try:
        tally = grow_.grow(settings, to, suffix, lambda line: typer.echo(line, err=True))
    except KycstreamError as exc:
        raise _fail(str(exc)) from exc
    if not tally["finished"]:
        typer.echo("run again once the processors are stopped (their group has no member) to finish", err=True)
        return
    typer.echo("switch the gateway, the processors, the reconciler and the consumers to the new set:")
    for role in grow_.GROWN_ROLES:
        typer.echo(f"KYCSTREAM_TOPICS__{role.upper()}={getattr(target, role)}")


@app.command()
def redrive(
    config: ConfigOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would happen.")] = False,
) -> None:
    """Send the DLQ's records (since the last redrive) back to where they are handled again.

    Deliveries that normalize now return to the raw topic (those that still fail stay, with their
    new reason); fetch letters' notices return to the events topic, fetched again by the reconciler;
    poll letters' expectations are posted again.
    """
    from processors.operate.replay import redrive as run_redrive

    settings = _load(ProcessorSettings, config)
    try:
        tally = run_redrive(settings, dry_run=dry_run)
    except KycstreamError as exc:
        raise _fail(str(exc)) from exc
    verb = "would be" if dry_run else "were"
    typer.echo(f"{tally.pop('redriven', 0)} dead letters {verb} redriven to the raw topic", err=True)
    typer.echo(f"{tally.pop('refetched', 0)} fetch letters' notices {verb} sent back for the fetcher", err=True)
    typer.echo(f"{tally.pop('repolled', 0)} poll letters' expectations {verb} posted again", err=True)
    for reason, count in sorted(tally.items()):
        what, _, code = reason.partition(":")
        typer.echo(f"{count} {verb} {what.replace('_', ' ')}: {code}", err=True)


@app.command("inspect")
def inspect_(
    key: Annotated[str, typer.Argument(metavar="PROVIDER:ID", help="The verification, e.g. esign:d208917d.")],
    config: ConfigOpt = None,
    since: Annotated[
        datetime | None,
        typer.Option(help="Only records written at or after this time (ISO 8601, UTC); default: the dedup window ago."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout, for scripts.")] = False,
    show_bodies: Annotated[
        bool, typer.Option("--show-bodies", help="Also print delivery bodies and headers: they hold personal data.")
    ] = False,
) -> None:
    """Everything kycstream knows about one verification, in time order: deliveries (callbacks, polls,
    fetches), events, states, dead letters and expectations.

    Reads only the partitions that can hold the key, from --since on."""
    from datetime import timedelta

    from processors.kafka import config as kconfig
    from processors.kafka.serde import Codec
    from processors.operate import lookup, timeline
    from processors.providers import REGISTRY

    provider, sep, vid = key.partition(":")
    if not sep or not vid or provider not in REGISTRY:
        raise _fail(
            f"give the verification as PROVIDER:ID, e.g. esign:d208917d (providers: {', '.join(sorted(REGISTRY))})"
        )
    settings = _load(ProcessorSettings, config)
    start = _utc(since) or datetime.now(UTC) - timedelta(seconds=settings.processor.dedup_window_s)
    codec = Codec(kconfig.schema_registry(settings.kafka))
    try:
        found, scanned = lookup.find(settings.kafka, settings.topics, key, start, codec)
    except KycstreamError as exc:
        raise _fail(str(exc)) from exc
    story = timeline.assemble(key, start, found, scanned, show_bodies=show_bodies)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(timeline.to_json(story)) + b"\n")
    else:
        typer.echo(timeline.to_table(story))


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
    from processors.kafka import reader

    settings = _load(Settings, config)
    role = next((r for r in _ROLE_TYPES if topic in (r, getattr(settings.topics, r))), None)
    printer = _Printer(settings, getattr(settings.topics, role) if role else topic, _ROLE_TYPES[role] if role else None)
    # The last N matching one key are found by reading everything: "the last N of each partition" may hold none.
    start: reader.Start = "beginning" if from_beginning or (count and key) else (count if count else "end")
    printed = 0
    try:
        items = reader.follow(settings.kafka, printer.topic, start, idle_timeout=timeout)
        if key is not None:
            items = (i for i in items if isinstance(i, reader.CaughtUp) or i.key == key.encode())
        if count and not from_beginning:
            items = reader.latest_first(items, count)
        for item in items:
            if isinstance(item, reader.Record):
                printer.write(item)
                printed += 1
            if count is not None and printed >= count:
                return
    except KycstreamError as exc:
        raise _fail(str(exc)) from exc
    except KeyboardInterrupt:
        return


class _Printer:
    """A topic's records as JSON lines on stdout, decoded as `kind` or, when the topic is none of the
    configured ones, as what its first record with a value is."""

    def __init__(self, settings: Settings, topic: str, kind: RecordType | None) -> None:
        from processors.kafka import config as kconfig
        from processors.kafka.serde import Codec

        self.topic, self.kind, self.registry = topic, kind, bool(settings.kafka.schema_registry_url)
        self.codec = Codec(kconfig.schema_registry(settings.kafka))

    def write(self, record: Record) -> None:
        from processors.kafka import identify

        if self.kind is None and record.value:
            self.kind = identify.record_type(self.codec, record.value, self.topic)
            if self.kind is None:
                raise _fail(
                    f"{self.topic} does not hold kycstream records: its record at partition {record.partition} "
                    f"offset {record.offset} is {identify.describe(record.value, self.registry)}"
                )
        sys.stdout.buffer.write(_render(self.codec, self.kind, self.topic, record) + b"\n")
        sys.stdout.flush()


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


ContractConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Describe this config's topic names and groups (default: the defaults)."),
]


@app.command()
def asyncapi(
    config: ContractConfigOpt = None,
    output: Annotated[str, typer.Option("--output", "-o", help="File to write; - for standard output.")] = (
        "docs/asyncapi.yaml"
    ),
) -> None:
    """Write the AsyncAPI 3.0 document of every topic kycstream reads or writes: keys, headers, Avro values."""
    from processors import contract
    from processors.kafka.topics import specs
    from processors.settings import ReconcileSettings

    try:
        processor, reconciler = ProcessorSettings.load(config), ReconcileSettings.load(config)
    except KycstreamError as exc:
        raise _fail(str(exc)) from exc
    document = contract.asyncapi(
        specs(processor.topics),
        processor_group=processor.processor.group_id,
        reconciler_group=reconciler.reconcile.group_id,
        version=_version(),
    )
    _write(contract.dump(document), output)


@app.command()
def openapi(
    output: Annotated[str, typer.Option("--output", "-o", help="File to write; - for standard output.")] = (
        "docs/openapi.json"
    ),
) -> None:
    """Write the OpenAPI document of the gateway's HTTP side (also served at /openapi.json)."""
    from gateway.openapi import document, dump

    _write(dump(document(_version())), output)


def _version() -> str:
    from importlib.metadata import version

    return version("kycstream")


def _write(text: str, output: str) -> None:
    if output == "-":
        sys.stdout.write(text)
        return
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(text)
    typer.echo(f"wrote {output}", err=True)
