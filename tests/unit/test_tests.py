"""Rules about the tests themselves."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def _sleep_calls(source: str) -> dict[int, bool]:
    """{line: whether it has a `# sleep:` comment} for each line calling time.sleep, asyncio.sleep or a
    bare sleep (strings and comments are not calls)."""
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type != tokenize.NL]
    explained = {
        t.start[0] for t in tokens if t.type == tokenize.COMMENT and t.string.lstrip("# ").startswith("sleep:")
    }
    calls = {}
    for i, t in enumerate(tokens[:-1]):
        if t.type != tokenize.NAME or t.string != "sleep" or tokens[i + 1].string != "(":
            continue
        before = [u.string for u in tokens[max(0, i - 2) : i]]
        if before[-1:] == ["def"] or (before[-1:] == ["."] and before[0] not in ("time", "asyncio")):
            continue
        calls[t.start[0]] = t.start[0] in explained
    return calls


def _sleeps_without_a_reason(root: Path) -> list[str]:
    """`path:line: text` of every sleep call in `root`'s Python files without a `# sleep:` comment on
    its line (the comment says why: a fault's duration, a rate, a fake server's latency, or the poll
    interval of a helper that has a deadline and a message)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        lines = source.splitlines()
        for number, ok in _sleep_calls(source).items():
            if not ok:
                found.append(f"{path.relative_to(root.parent)}:{number}: {lines[number - 1].strip()}")
    return found


def test_every_sleep_in_the_tests_says_why_it_is_not_a_wait_for_a_fact() -> None:
    unexplained = _sleeps_without_a_reason(TESTS)
    assert not unexplained, (
        "a test that waits for something to become true waits for it (tests.conftest.wait_until); any "
        "other sleep says why on its line with `# sleep: ...`:\n" + "\n".join(unexplained)
    )


def test_the_sleep_rule_finds_what_it_should(tmp_path: Path) -> None:
    (tmp_path / "t.py").write_text(
        "import asyncio, time\n"
        "time.sleep(1)\n"
        "await asyncio.sleep(0.1)  # the outage\n"
        "time.sleep(2)  # sleep: a fault's duration\n"
        "from time import sleep; sleep(3)\n"
        "stop.wait(0.5)  # not a sleep call\n"
        "x = 'time.sleep(9)'  # time.sleep(9)\n"
        "def sleep(s): pass\n"
        "timer.sleep(1)  # another object's sleep: not counted\n"
    )
    assert [f.split(":")[1] for f in _sleeps_without_a_reason(tmp_path)] == ["2", "3", "5"]
