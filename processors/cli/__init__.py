"""`kycstream`: the composition root. Each command loads its role's settings and starts that role.

common.py holds the app and the configuration rule; roles.py the long-running roles and `run`;
operate.py the operator's commands (replay, redrive, tail, normalize); schemas.py `schemas register`.
"""

from __future__ import annotations

import importlib

from processors.cli.common import app

# Importing a module registers its commands, in --help order.
for _module in ("roles", "operate", "providers", "schemas"):
    importlib.import_module(f"processors.cli.{_module}")

__all__ = ["app", "main"]


def main() -> None:
    app()
