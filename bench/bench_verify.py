"""Time the verify pass against the tools an administrator would otherwise use, on one generated tree and its copy.

Usage: python bench/bench_verify.py [--files 20000] [--dirs 200] [--max-size 65536] [--seed 1]
                                    [--workdir bench/_work_verify] [--jobs N] [--repeat R] [--no-strace]

The source is generated once (WORKDIR/src, reused while the parameters are unchanged) and copied to WORKDIR/dst
with ``rsync -aHAXS``. Then, in one run:

* metadata: ``cmover verify`` against ``rsync -aHAXn --delete`` (a dry run: what rsync reads to decide);
* content: ``cmover verify --content`` against ``rsync -aHAXcn --delete``, against ``b3sum`` run over every
  file of both trees, and against ``cat`` of every file of both trees to /dev/null (the floor: reading the data).

Every tool runs with the page cache as the previous one left it (both trees fit in memory on a test machine;
``--drop-caches`` drops it before each timing, as root). Syscalls per entry come from a separate run of each
tool under ``strace -f -c`` (``--no-strace`` skips them). Goals, printed with the figures: metadata verify at
least 1.0x the speed of ``rsync -aHAXn``, content verify at least 0.9x the speed of ``cat``. Results are also
written to WORKDIR/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

from bench_copy import find_cmover, prepare_source  # noqa: E402

GOALS = {"metadata": ("rsync -aHAXn", 1.0), "content": ("cat both trees", 0.9)}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _each_file(roots: list[str], cmd: str) -> list[str]:
    """A shell pipeline running ``cmd`` over every regular file of ``roots`` (names with any byte: -print0)."""
    return ["sh", "-c", f"find {' '.join(shlex.quote(r) for r in roots)} -type f -print0 | xargs -0 -r {cmd} "
            ">/dev/null"]


def _drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def timed(cmd: list[str], ok: tuple[int, ...], drop: bool) -> float:
    if drop:
        _drop_caches()
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    if proc.returncode not in ok:
        raise SystemExit(f"{shlex.join(cmd)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}")
    return seconds


#: strace -c's last line: "100.00  seconds  usecs/call  calls  [errors]  total".
_TOTAL_RE = re.compile(rb"^\s*100\.00\s+\S+\s+\S+\s+(\d+)\s+(?:\d+\s+)?total", re.M)


def syscalls(cmd: list[str], workdir: str) -> int | None:
    """Total syscalls of ``cmd`` and its children (``strace -f -c``); None when strace is missing."""
    if shutil.which("strace") is None:
        return None
    out = os.path.join(workdir, "strace.txt")
    subprocess.run(["strace", "-f", "-c", "-o", out, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out, "rb") as f:
        text = f.read()
    m = _TOTAL_RE.search(text)
    return int(m.group(1)) if m else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=20000)
    p.add_argument("--dirs", type=int, default=200)
    p.add_argument("--max-size", type=int, default=65536)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", default=os.path.join(REPO, "bench", "_work_verify"))
    p.add_argument("--jobs", type=int, default=0, help="cmover -j (default: its own, 2 x cores)")
    p.add_argument("--repeat", type=int, default=1, help="time each tool R times, report the median")
    p.add_argument("--drop-caches", action="store_true", help="drop the page cache before each timing (root)")
    p.add_argument("--no-strace", action="store_true")
    p.add_argument("--cmover", help="the cmover command (default: the repo's .venv)")
    args = p.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    params = {"files": args.files, "dirs": args.dirs, "max_size": args.max_size, "seed": args.seed}
    counts = prepare_source(args.workdir, params)
    src, dst = os.path.join(args.workdir, "src"), os.path.join(args.workdir, "dst")
    _log("copying with rsync -aHAXS ...")
    subprocess.run(["rsync", "-aHAXS", "--delete", src + "/", dst], check=True)
    cmover = find_cmover(args.cmover)
    if cmover is None:
        raise SystemExit("cmover not found: run scripts/services.sh ensure_venv or give --cmover")
    verify = [*cmover, "verify", "--embedded", "-q", *(["-j", str(args.jobs)] if args.jobs else [])]
    entries = counts["entries"]
    tools = {
        "metadata": [
            ("cmover verify", [*verify, src, dst], (0,)),
            ("rsync -aHAXn", ["rsync", "-aHAXn", "--delete", src + "/", dst], (0,)),
        ],
        "content": [
            ("cmover verify --content", [*verify, "--content", src, dst], (0,)),
            ("rsync -aHAXcn", ["rsync", "-aHAXcn", "--delete", src + "/", dst], (0,)),
            ("b3sum both trees", _each_file([src, dst], "b3sum"), (0,)),
            ("cat both trees", _each_file([src, dst], "cat"), (0,)),
        ],
    }
    results = []
    for phase, runs in tools.items():
        for name, cmd, ok in runs:
            timed(cmd, ok, False)  # warm-up: every tool starts from the same page cache
            secs = statistics.median(timed(cmd, ok, args.drop_caches) for _ in range(args.repeat))
            calls = None if args.no_strace else syscalls(cmd, args.workdir)
            results.append({"phase": phase, "tool": name, "seconds": secs, "entries_per_s": entries / secs,
                            "syscalls_per_entry": None if calls is None else calls / entries, "command": cmd})
            _log(f"{phase:9} {name:26} {secs:8.2f} s")
    print(f"tree: {entries:,} entries ({counts.get('files', 0):,} files), {params}; page cache "
          f"{'dropped before each timing' if args.drop_caches else 'warm'}; {os.cpu_count()} cores")
    print(f"{'phase':9}  {'tool':26} {'seconds':>8} {'entries/s':>10} {'syscalls/entry':>15} {'speed vs ref':>12}")
    for phase, (ref_name, goal) in GOALS.items():
        ref = next(r for r in results if r["phase"] == phase and r["tool"] == ref_name)
        for r in (r for r in results if r["phase"] == phase):
            r["speed_vs_ref"] = ref["seconds"] / r["seconds"]
            sc = "-" if r["syscalls_per_entry"] is None else f"{r['syscalls_per_entry']:.1f}"
            print(f"{phase:9}  {r['tool']:26} {r['seconds']:8.2f} {r['entries_per_s']:10,.0f} {sc:>15} "
                  f"{r['speed_vs_ref']:11.2f}x")
        mine = next(r for r in results if r["phase"] == phase and r["tool"].startswith("cmover"))
        met = mine["speed_vs_ref"] >= goal
        print(f"goal {phase}: cmover at least {goal}x the speed of {ref_name}: {mine['speed_vs_ref']:.2f}x -- "
              f"{'met' if met else 'NOT met'}")
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump({"params": params, "entries": entries, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
