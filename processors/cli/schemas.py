"""`kycstream schemas register [--check]`: the CI step that checks each schema's compatibility with
its subject and registers it before a deploy, so the roles can run with auto-registration off."""

from __future__ import annotations

from typing import Annotated

import typer

from processors.cli.common import ConfigOpt, _fail, _load, app
from processors.errors import KycstreamError
from processors.settings import Settings

schemas_app = typer.Typer(no_args_is_help=True, help="kycstream's Avro schemas in a schema registry.")
app.add_typer(schemas_app, name="schemas")


@schemas_app.command("register")
def schemas_register(
    config: ConfigOpt = None,
    check: Annotated[
        bool, typer.Option("--check", help="Only check compatibility; register nothing (exit 1 if incompatible).")
    ] = False,
) -> None:
    """Check each record type's schema against its subject's latest version, then register it (the
    subjects follow kafka.schema_registry_subject_name_strategy and _internal_topics)."""
    from processors.kafka import config as kconfig
    from processors.kafka import registry
    from processors.kafka.serde import Codec

    settings = _load(Settings, config)
    registry_conf = kconfig.schema_registry(settings.kafka)
    if registry_conf is None:
        raise _fail("no schema registry: set kafka.schema_registry_url (or SCHEMA_REGISTRY_URL)")
    codec = Codec(registry_conf)
    try:
        results = registry.check(codec, registry.writes(settings.topics))
        incompatible = [subject for subject, outcome in results if outcome == "incompatible"]
        for subject, outcome in results:
            if check or incompatible:
                typer.echo(f"{outcome:12} {subject}")
            else:
                typer.echo(f"{'registered':12} {subject} id {registry.register(codec, subject)} (was {outcome})")
    except KycstreamError as exc:
        raise _fail(str(exc)) from exc
    finally:
        codec.close()
    if incompatible:
        raise _fail(
            f"incompatible with the latest version of {', '.join(s.name for s in incompatible)} under the "
            "subjects' compatibility level: nothing registered. Make the change compatible (schemas/README.md) "
            "or write to a new topic version",
            code=1,
        )
