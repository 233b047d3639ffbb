"""Render a kustomization without kubectl: `python deploy/render.py DIR` prints what `kubectl kustomize DIR` does.

The fallback of deploy/check.sh for machines without kubectl or kustomize. It uses pykustomize, a
PyPI wheel wrapping kustomize's Go library (kustomize v5, the same engine as kubectl's). That wheel
declares Python >= 3.14 but is pure Python over a bundled shared library and runs on 3.11, so
check.sh installs it with --ignore-requires-python into the tools venv (.venv-deploy).
"""

from __future__ import annotations

import asyncio
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python deploy/render.py KUSTOMIZATION_DIR", file=sys.stderr)
        return 2
    import pykustomize

    try:
        result = asyncio.run(pykustomize.build(argv[0]))
    except pykustomize.KustomizeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(result.yaml)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
