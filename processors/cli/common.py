"""What every command shares: the app, finding and loading the configuration, failing clearly."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from processors import logs
from processors.errors import KycstreamError
from processors.settings import CONFIG_ENV, S

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
    from processors.providers import BROKEN

    for name, why in BROKEN.items():  # reported at every start; the other providers work on
        logs.get("kycstream.providers").error("provider_broken", provider=name, error=why)
    return settings


def _override(settings: S, **sections: dict[str, Any]) -> S:
    try:
        return settings.with_overrides(**sections)
    except KycstreamError as exc:
        raise _fail(str(exc)) from exc
