"""Run the fault-injection suite (tests/faults) and print the fault matrix.

Usage: python bench/fault_matrix.py [PYTEST ARGS...]        (as root: the tests mount a tmpfs)

Runs ``pytest tests/faults`` with ``$CMFAULT_MATRIX`` naming a temporary file. Each scenario writes one
JSON line there from its real run (see tests/faults/conftest.py: MatrixRow) -- how often its fault was
injected, whether the pass completed, how many entries the final tree comparison covered and how many
differences it found -- and the pytest outcome of each test comes from a JUnit XML report. Then one
table is printed: a scenario whose test failed says so in the last column; a test that failed before
it could record anything gets a row of its own with "n". Extra arguments go to pytest (e.g. ``-k poison``
or ``-x``). Exit code: pytest's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("fault", "times injected", "pass completed", "entries compared", "differences found", "test", "s",
           "note")


def outcomes(junit: Path) -> dict[str, str]:
    """Test function name -> passed | failed | error | skipped, from a JUnit XML report."""
    result: dict[str, str] = {}
    if not junit.exists():
        return result
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "")
        state = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                state = "failed" if tag == "failure" else tag
        result[name] = state
    return result


def table(rows: list[dict[str, object]], results: dict[str, str]) -> str:
    lines: list[tuple[str, ...]] = []
    recorded = set()
    for r in rows:
        name = str(r.get("test", "")).rpartition("::")[2]
        recorded.add(name)
        lines.append((str(r["fault"]), str(r["injected"]), "y" if r["completed"] else "n", str(r["entries"]),
                      str(r["differences"]), results.get(name, "?"), f"{r['seconds']:.0f}", str(r.get("note", ""))))
    for name, state in results.items():
        if name not in recorded and state != "passed":
            lines.append((name, "-", "n", "-", "-", state, "-", "failed before recording its numbers"))
    widths = [max(len(c), *(len(line[i]) for line in lines)) if lines else len(c) for i, c in enumerate(COLUMNS)]
    out = [" | ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip(),
           "-+-".join("-" * w for w in widths)]
    out += [" | ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    python = REPO / ".venv" / "bin" / "python"
    with tempfile.TemporaryDirectory(prefix="cmfault-matrix-") as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        junit = Path(tmp) / "junit.xml"
        env = dict(os.environ, CMFAULT_MATRIX=str(rows_file))
        cmd = [str(python if python.exists() else sys.executable), "-m", "pytest", "tests/faults", "-q",
               "-p", "no:cacheprovider", f"--junitxml={junit}", *argv]
        rc = subprocess.run(cmd, cwd=REPO, env=env).returncode
        rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
        print()
        print(table(rows, outcomes(junit)))
    return rc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
