"""`kycstream`: the composition root. Each command loads its role's settings and starts that role.

common.py holds the app and the configuration rule; roles.py the long-running roles and `run`;
operate.py the operator's commands (replay, redrive, tail, normalize).
"""

from __future__ import annotations

import importlib

from processors.cli.common import app

for _module in ("roles", "operate", "providers"):  # importing a module registers its commands, in --help order
    importlib.import_module(f"processors.cli.{_module}")

__all__ = ["app", "main"]


def main() -> None:
    app()
