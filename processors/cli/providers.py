"""`kycstream providers`: what is installed, and the conformance kit on each."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from processors.cli.common import _fail, app

providers_app = typer.Typer(
    invoke_without_command=True, help="The installed providers (entry points kycstream.providers), and the kit."
)
app.add_typer(providers_app, name="providers")

CasesOpt = Annotated[
    Path | None,
    typer.Option(
        "--cases",
        help="Folder of golden cases (default: the provider's CASES folder, else tests/providers/NAME here).",
    ),
]


def cases_folder(name: str, given: Path | None = None) -> Path | None:
    """Where provider `name`'s golden cases are: `given`, else the folder its module names in
    CASES (relative to the module), else tests/providers/NAME under the current directory."""
    from processors.providers import INSTALLED

    if given is not None:
        return given
    module = INSTALLED[name].module if name in INSTALLED else None
    declared = getattr(module, "CASES", None)
    if declared:
        path: Path = Path(getattr(module, "__file__", ".")).parent / str(declared)
        if path.is_dir():
            return path
    local = Path("tests/providers") / name
    return local if local.is_dir() else None


@providers_app.callback()
def providers(ctx: typer.Context) -> None:
    """List each installed provider: its distribution and version, auth, what it fetches, the kit's verdict."""
    if ctx.invoked_subcommand is not None:
        return
    from processors.providers import BROKEN, INSTALLED
    from processors.providers.conformance import run

    for name, found in INSTALLED.items():
        module = found.module
        fetches = ", ".join(f"{word} → {kind}" for word, kind in module.FETCHES.items()) or "nothing"
        folder = cases_folder(name)
        verdict = run(name, folder).summary() if folder else "no golden cases found (give --cases to check)"
        typer.echo(
            f"{name}  {found.distribution} {found.version}  ({found.target})\n"
            f"  auth: {_scheme(module.DEFAULT_AUTH)}; methods: "
            f"{', '.join(module.METHODS)}; when Kafka is away: {module.UNAVAILABLE_STATUS}\n"
            f"  fetches: {fetches}"
            + (f"; routes: {', '.join(routes)}" if (routes := getattr(module, "ROUTES", ())) else "")
            + f"\n  kit: {verdict}"
        )
    for name, why in BROKEN.items():
        typer.echo(f"{name}  BROKEN: {why}")


@providers_app.command("check")
def check(
    name: Annotated[str, typer.Argument(help="The provider's name (its entry point).")],
    cases: CasesOpt = None,
    fuzz: Annotated[int, typer.Option(help="Mangled bodies per case.")] = 40,
) -> None:
    """Run the conformance kit on one provider: golden cases, keys, fuzzing, personal data. Exit 1 on findings."""
    from processors.providers import BROKEN, INSTALLED, providers_known
    from processors.providers.conformance import run

    if name not in INSTALLED:
        raise _fail(f"{name}: {BROKEN[name]}" if name in BROKEN else f"unknown provider {name!r}; {providers_known()}")
    folder = cases_folder(name, cases)
    if folder is None:
        raise _fail(f"no golden cases for {name}: give --cases DIR (a folder of case files)")
    report = run(name, folder, fuzz=fuzz)
    for finding in report.findings:
        typer.echo(f"{finding.check}  {finding.case}: {finding.problem}")
    typer.echo(f"{name}: {report.summary()}")
    if not report.ok:
        raise typer.Exit(1)


def _scheme(default: object) -> str:
    from processors import signing

    scheme = signing.declared(default)  # type: ignore[arg-type]
    name = signing.name_of(default) or signing.name_of(scheme)  # type: ignore[arg-type]
    return f"{name or type(scheme).__name__.lower()} in {scheme.header}"
