"""Time a full copy and a no-change pass of one generated tree with cp -a, rsync -a and cmover.

Usage: python bench/bench_copy.py [--files 100000] [--dirs 1000] [--seed 1] [--workdir bench/_work]
                                  [--jobs N] [--cmover CMD] [--repeat R]

The source tree is generated once under WORKDIR/src and reused while the parameters (and the generator)
are unchanged. Each tool copies into its own fresh WORKDIR/dst-<tool>; every timing ends with `sync`.
With --repeat R the whole sequence runs R times and the table shows medians. Results are printed as a
table and written to WORKDIR/results.json. See bench/README.md.
"""

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tree builder and snapshot live with the tests (tests/support) rather than in an installed package.
sys.path.insert(0, os.path.join(REPO, "tests"))

from support import snap, tree  # noqa: E402

MAX_SIZE = 16384
FULL = "full copy"
NO_CHANGE = "no-change"
GOALS = {FULL: ("cp -a", 1.0), NO_CHANGE: ("rsync -a", 1.0)}
SHOWN_DIFFERENCES = 10


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _rmtree(path: str) -> None:
    # rm copes with any name and with read-only directories, and is faster than shutil.rmtree on big trees.
    subprocess.run(["rm", "-rf", "--", path], check=True)


def _sync() -> None:
    subprocess.run(["sync"], check=True)


def prepare_source(workdir: str, params: dict, name: str = "src") -> dict:
    """Make sure WORKDIR/<name> holds the tree for params and return its counts.

    The tree is reused when WORKDIR/<name>.json records the same params; otherwise it is rebuilt. The marker
    is written only after the tree is complete, so an interrupted generation is never reused.
    """
    src = os.path.join(workdir, name)
    marker = os.path.join(workdir, name + ".json")
    try:
        with open(marker) as f:
            recorded = json.load(f)
        if recorded["params"] == params and os.path.isdir(src):
            _log(f"reusing source tree {src} ({recorded['counts']['entries']} entries)")
            return recorded["counts"]
    except (OSError, ValueError, KeyError):
        pass
    if os.path.exists(marker):
        os.unlink(marker)
    _rmtree(src)
    _log(f"generating source tree {src} ...")
    start = time.perf_counter()
    counts = tree.random_tree(
        os.fsencode(src),
        seed=params["seed"],
        n_files=params["files"],
        n_dirs=params["dirs"],
        max_size=params["max_size"],
    )
    _sync()
    _log(f"generated {counts['entries']} entries in {time.perf_counter() - start:.1f} s")
    with open(marker, "w") as f:
        json.dump({"params": params, "counts": counts}, f, indent=2)
    return counts


def find_cmover(option: str | None) -> list[str] | None:
    """The cmover command as an argv prefix: --cmover if given, else the repo's .venv, else PATH; None if absent."""
    if option:
        return shlex.split(option)
    venv = os.path.join(REPO, ".venv", "bin", "cmover")
    if os.access(venv, os.X_OK):
        return [venv]
    found = shutil.which("cmover")
    return [found] if found else None


def timed_run(name: str, phase: str, cmd: list[str], workdir: str) -> dict:
    """Run cmd then sync, timing both; output goes to a log file in workdir. Returns one result record."""
    log_path = os.path.join(workdir, f"{name.split()[0]}-{phase.replace(' ', '-')}.log")
    _log(f"{name} {phase}: {shlex.join(cmd)}")
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
        _sync()
        seconds = time.perf_counter() - start
    if proc.returncode:
        with open(log_path, "rb") as log:
            tail = log.read()[-2000:].decode(errors="replace")
        _log(f"  FAILED with exit code {proc.returncode}; output ends with:\n{tail}")
    else:
        _log(f"  {seconds:.2f} s")
    return {"tool": name, "phase": phase, "command": cmd, "seconds": seconds, "returncode": proc.returncode}


def check_copy(source: dict, target: str) -> dict:
    """Compare target with the source snapshot: counts of differences and the first few of them."""
    if not os.path.isdir(target):
        return {"differences": None, "differences_with_dir_times": None, "first": [], "error": "no target directory"}
    target_snapshot = snap.snapshot(target)
    problems = snap.diff(source, target_snapshot)
    with_dir_times = snap.diff(source, target_snapshot, dir_times=True)
    return {
        "differences": len(problems),
        "differences_with_dir_times": len(with_dir_times),
        "first": with_dir_times[:SHOWN_DIFFERENCES],
    }


def print_check(check: dict, label: str) -> None:
    if "error" in check:
        print(f"cmover's copy vs source {label}: not checked: {check['error']}")
        return
    print(
        f"cmover's copy vs source {label}: {check['differences']} differences"
        f" ({check['differences_with_dir_times']} counting directory mtimes)"
    )
    for line in check["first"]:
        print(f"  {line}")
    if check["differences_with_dir_times"] > len(check["first"]):
        print(f"  ... {check['differences_with_dir_times'] - len(check['first'])} more")


def summarize(runs: list[dict], entries: float, references: dict[str, str] | None = None) -> list[dict]:
    """One row per (tool, phase), in first-run order, from the median of its successful runs.

    entries_per_s and ratio (reference tool's median seconds / this median; above 1 is faster) are None
    when every run of the row, or of its reference, failed. references maps each phase to its reference
    tool (default: the tools of GOALS).
    """
    if references is None:
        references = {phase: tool for phase, (tool, _goal) in GOALS.items()}
    rows: dict[tuple[str, str], dict] = {}
    for run in runs:
        row = rows.setdefault(
            (run["tool"], run["phase"]),
            {"tool": run["tool"], "phase": run["phase"], "command": run["command"], "all_seconds": [], "failures": 0},
        )
        if run["returncode"] == 0:
            row["all_seconds"].append(run["seconds"])
        else:
            row["failures"] += 1
    for row in rows.values():
        row["seconds"] = statistics.median(row["all_seconds"]) if row["all_seconds"] else None
        row["entries_per_s"] = entries / row["seconds"] if row["seconds"] else None
    for row in rows.values():
        ref_tool = references[row["phase"]]
        reference = rows.get((ref_tool, row["phase"]))
        ref_seconds = reference["seconds"] if reference else None
        row["ratio_vs"] = ref_tool
        row["ratio"] = ref_seconds / row["seconds"] if ref_seconds and row["seconds"] else None
    return list(rows.values())


def print_table(results: list[dict], repeat: int) -> None:
    print()
    print(f"{'tool':<10} {'phase':<10} {'seconds':>9} {'entries/s':>10} {'ratio':>7}  vs")
    for r in results:
        seconds = f"{r['seconds']:.2f}" if r["seconds"] else "FAILED"
        rate = f"{r['entries_per_s']:,.0f}" if r["entries_per_s"] else "-"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "-"
        failed = f"  ({r['failures']} of {repeat} runs failed)" if r["failures"] else ""
        print(f"{r['tool']:<10} {r['phase']:<10} {seconds:>9} {rate:>10} {ratio:>7}  {r['ratio_vs']}{failed}")
    if repeat > 1:
        print(f"Seconds are the median of {repeat} rounds.")
    print()
    print("All timings include a final `sync`; the source tree is in the page cache (read just before).")
    print("Ratio = reference tool's seconds / this tool's seconds (above 1 is faster than the reference).")
    print("Goals: " + "; ".join(f"{phase} >= {goal:.1f}x {tool}" for phase, (tool, goal) in GOALS.items()))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark described in the module docstring; returns the exit code (0 even if cmover fails)."""
    parser = argparse.ArgumentParser(description="Compare cmover copy with cp -a and rsync -a on a generated tree.")
    parser.add_argument("--files", type=int, default=100_000, help="regular files in the tree (default 100000)")
    parser.add_argument("--dirs", type=int, default=1000, help="directories in the tree (default 1000)")
    parser.add_argument("--seed", type=int, default=1, help="tree seed (default 1)")
    parser.add_argument(
        "--workdir", default=os.path.join(REPO, "bench", "_work"), help="where trees go (default bench/_work)"
    )
    parser.add_argument("--jobs", type=int, help="passed to cmover copy as --jobs N")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all runs; the table shows medians")
    parser.add_argument("--cmover", help="cmover command (default: .venv/bin/cmover of the repo, else PATH)")
    args = parser.parse_args(argv)

    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    with open(tree.__file__, "rb") as f:
        # A changed generator means a different tree even for the same numbers.
        generator = hashlib.blake2b(f.read(), digest_size=8).hexdigest()
    params = {"files": args.files, "dirs": args.dirs, "seed": args.seed, "max_size": MAX_SIZE, "generator": generator}
    counts = prepare_source(workdir, params)
    entries = counts["entries"]
    src = os.path.join(workdir, "src")

    cmover = find_cmover(args.cmover)
    if cmover is None:
        _log("cmover not found (no .venv/bin/cmover, none on PATH, no --cmover): timing cp -a and rsync only")
    jobs = ["--jobs", str(args.jobs)] if args.jobs else []

    _log("reading the source tree (snapshot for the final check; also warms the page cache) ...")
    source_snapshot = snap.snapshot(src)

    def target(tool: str) -> str:
        path = os.path.join(workdir, f"dst-{tool}")
        _rmtree(path)
        _sync()
        return path

    runs: list[dict] = []
    checks: dict[str, dict] = {}
    dst_rsync = os.path.join(workdir, "dst-rsync")
    dst_cmover = os.path.join(workdir, "dst-cmover")
    for round_no in range(1, args.repeat + 1):
        if args.repeat > 1:
            _log(f"round {round_no} of {args.repeat}")
        dst = target("cp")
        runs.append(timed_run("cp -a", FULL, ["cp", "-a", src, dst], workdir))
        target("rsync")
        runs.append(timed_run("rsync -a", FULL, ["rsync", "-a", src + "/", dst_rsync + "/"], workdir))
        if cmover:
            target("cmover")
            runs.append(timed_run("cmover", FULL, [*cmover, "copy", *jobs, src, dst_cmover], workdir))
            if round_no == 1:
                _log("checking cmover's copy ...")
                checks["after_full_copy"] = check_copy(source_snapshot, dst_cmover)
        runs.append(timed_run("rsync -a", NO_CHANGE, ["rsync", "-a", src + "/", dst_rsync + "/"], workdir))
        if cmover:
            runs.append(timed_run("cmover", NO_CHANGE, [*cmover, "copy", *jobs, src, dst_cmover], workdir))
    results = summarize(runs, entries)

    print(
        f"Tree: {entries:,} entries ({counts['files']:,} files of 0-{MAX_SIZE} bytes, {counts['dirs']:,} dirs,"
        f" {counts['symlinks']:,} symlinks), seed {args.seed}; {os.cpu_count()} CPUs"
    )
    print_table(results, args.repeat)
    if cmover:
        checks["after_no_change"] = check_copy(source_snapshot, dst_cmover)
        print()
        for label, key in (("after the full copy", "after_full_copy"), ("after the no-change pass", "after_no_change")):
            print_check(checks[key], label)

    report = {
        "params": params,
        "counts": counts,
        "host": {"cpus": os.cpu_count(), "system": platform.platform()},
        "timings_include_sync": True,
        "goals": {phase: {"vs": tool, "ratio": goal} for phase, (tool, goal) in GOALS.items()},
        "repeat": args.repeat,
        "results": results,
        "runs": runs,
        "cmover_check": checks,
    }
    out = os.path.join(workdir, "results.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"Results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
