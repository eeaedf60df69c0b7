"""Time copies of large files with cp -a, rsync -a --whole-file and cmover (throughput, not per-entry cost).

Usage: python bench/bench_bigfiles.py [--scenario files|chunked|all] [--files 8] [--size 512M]
                                      [--big-size 4G] [--repeat R] [--workdir bench/_work] [--cmover CMD]
                                      [--jobs N] [--chunk-threshold 1G] [--chunk-size 256M]

Scenario "files": N files of SIZE random bytes in WORKDIR/big-files, copied by cp -a, rsync -a --whole-file
and cmover copy. Scenario "chunked": one file of BIG-SIZE in WORKDIR/big-one, copied by cp -a and by
cmover copy --chunk-threshold T --chunk-size C. Sources are generated once and reused while their
parameters are unchanged. Each run copies into a fresh destination (every earlier destination removed and
synced first, not timed); every timing ends with `sync`. With --repeat R the table shows medians. Sizes
accept K/M/G/T suffixes (powers of 1024). Results are printed and written to WORKDIR/big-results.json.
See bench/README.md.
"""

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time

from bench_copy import REPO, _log, _rmtree, _sync, find_cmover, summarize, timed_run

FILES = "files"
CHUNKED = "chunked"
REFERENCE = "cp -a"
PIECE = 16 << 20
SHOWN_DIFFERENCES = 10
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from '512M', '4G', '1048576', '64k' (suffixes are powers of 1024; a trailing 'iB' or 'B' is allowed)."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 512M, 4G)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def human(size: int) -> str:
    """'512 MiB', '4 GiB', '1000 bytes': the largest binary unit that divides size exactly."""
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


def _write_random(path: str, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            piece = min(PIECE, left)
            f.write(os.urandom(piece))
            left -= piece


def prepare_files(workdir: str, name: str, params: dict) -> str:
    """Make sure WORKDIR/<name> holds params['files'] files of params['size'] random bytes; return its path.

    Reused when WORKDIR/<name>.json records the same params; otherwise rebuilt. The marker is written only
    after the files are complete and synced, so an interrupted generation is never reused.
    """
    src = os.path.join(workdir, name)
    marker = src + ".json"
    try:
        with open(marker) as f:
            if json.load(f)["params"] == params and os.path.isdir(src):
                _log(f"reusing {src} ({params['files']} x {human(params['size'])})")
                return src
    except (OSError, ValueError, KeyError):
        pass
    if os.path.exists(marker):
        os.unlink(marker)
    _rmtree(src)
    os.makedirs(src)
    _log(f"generating {src}: {params['files']} x {human(params['size'])} of random data ...")
    start = time.perf_counter()
    for i in range(params["files"]):
        _write_random(os.path.join(src, f"file{i:03d}.bin"), params["size"])
    _sync()
    _log(f"generated in {time.perf_counter() - start:.1f} s")
    with open(marker, "w") as f:
        json.dump({"params": params}, f, indent=2)
    return src


def read_source(src: str) -> dict[str, dict]:
    """Read every file of src once: size, mtime_ns and sha256 per name. Also warms the page cache."""
    info = {}
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        st = os.stat(path)
        info[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256(path)}
    return info


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(PIECE):
            h.update(chunk)
    return h.hexdigest()


def check_files(source: dict[str, dict], target: str) -> list[str]:
    """Differences between the source files (read_source) and target: missing, extra, size, mtime_ns, sha256."""
    if not os.path.isdir(target):
        return [f"{target}: no target directory"]
    problems = []
    present = set(os.listdir(target))
    for name in sorted(present - source.keys()):
        problems.append(f"{name}: extra on target")
    for name, want in source.items():
        path = os.path.join(target, name)
        if name not in present:
            problems.append(f"{name}: missing on target")
            continue
        st = os.stat(path)
        if st.st_size != want["size"]:
            problems.append(f"{name}: size differs: source={want['size']} target={st.st_size}")
            continue
        if st.st_mtime_ns != want["mtime_ns"]:
            problems.append(f"{name}: mtime_ns differs: source={want['mtime_ns']} target={st.st_mtime_ns}")
        if _sha256(path) != want["sha256"]:
            problems.append(f"{name}: sha256 differs")
    return problems


def cmover_has_chunk_options(cmover: list[str]) -> bool:
    """True when `cmover copy --help` lists --chunk-threshold and --chunk-size."""
    proc = subprocess.run([*cmover, "copy", "--help"], capture_output=True, text=True)
    return "--chunk-threshold" in proc.stdout and "--chunk-size" in proc.stdout


def print_table(results: list[dict], repeat: int) -> None:
    print()
    print(f"{'scenario':<9} {'tool':<18} {'seconds':>9} {'MB/s':>8} {'ratio':>7}  vs")
    for r in results:
        seconds = f"{r['seconds']:.2f}" if r["seconds"] else "FAILED"
        rate = f"{r['mb_per_s']:,.0f}" if r["mb_per_s"] else "-"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "-"
        failed = f"  ({r['failures']} of {repeat} runs failed)" if r["failures"] else ""
        runs = ""
        if repeat > 1 and r["all_seconds"]:
            runs = "  runs " + ", ".join(f"{s:.2f}" for s in r["all_seconds"])
        print(f"{r['phase']:<9} {r['tool']:<18} {seconds:>9} {rate:>8} {ratio:>7}  {r['ratio_vs']}{failed}{runs}")
    if repeat > 1:
        print(f"Seconds are the median of {repeat} rounds.")
    print()
    print("All timings include a final `sync`; the sources are in the page cache (read just before).")
    print("MB/s = bytes copied / seconds / 10^6. Ratio = cp -a seconds / this tool's seconds (above 1 is faster).")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark described in the module docstring; returns the exit code (0 even if cmover fails)."""
    parser = argparse.ArgumentParser(description="Compare cmover copy with cp -a and rsync -a on large files.")
    parser.add_argument("--scenario", choices=(FILES, CHUNKED, "all"), default="all", help="what to run (default all)")
    parser.add_argument("--files", type=int, default=8, help="files in the 'files' scenario (default 8)")
    parser.add_argument("--size", type=parse_size, default=parse_size("512M"), help="size of each (default 512M)")
    parser.add_argument(
        "--big-size", type=parse_size, default=parse_size("4G"), help="the one file of 'chunked' (default 4G)"
    )
    parser.add_argument("--chunk-threshold", default="1G", help="given to cmover in 'chunked' (default 1G)")
    parser.add_argument("--chunk-size", default="256M", help="given to cmover in 'chunked' (default 256M)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all runs; the table shows medians")
    parser.add_argument(
        "--workdir", default=os.path.join(REPO, "bench", "_work"), help="where files go (default bench/_work)"
    )
    parser.add_argument("--cmover", help="cmover command (default: .venv/bin/cmover of the repo, else PATH)")
    parser.add_argument("--jobs", type=int, help="passed to cmover copy as --jobs N")
    args = parser.parse_args(argv)

    workdir = os.path.abspath(args.workdir)
    logdir = os.path.join(workdir, "big-logs")
    os.makedirs(logdir, exist_ok=True)
    scenarios = [FILES, CHUNKED] if args.scenario == "all" else [args.scenario]
    cmover = find_cmover(args.cmover)
    if cmover is None:
        _log("cmover not found (no .venv/bin/cmover, none on PATH, no --cmover): timing cp -a and rsync only")
    jobs = ["--jobs", str(args.jobs)] if args.jobs else []
    chunk_options = ["--chunk-threshold", args.chunk_threshold, "--chunk-size", args.chunk_size]
    notes = []
    if cmover and CHUNKED in scenarios and not cmover_has_chunk_options(cmover):
        notes.append("this cmover has no --chunk-threshold/--chunk-size: the chunked scenario ran plain `cmover copy`")
        _log("NOTE: " + notes[-1])
        chunk_options = []

    sources = {}
    if FILES in scenarios:
        params = {"files": args.files, "size": args.size}
        sources[FILES] = (prepare_files(workdir, "big-files", params), params)
    if CHUNKED in scenarios:
        params = {"files": 1, "size": args.big_size}
        sources[CHUNKED] = (prepare_files(workdir, "big-one", params), params)
    source_info = {}
    for scenario, (src, _params) in sources.items():
        _log(f"reading {src} (sha256 for the check; also warms the page cache) ...")
        source_info[scenario] = read_source(src)

    def dst_of(short: str) -> str:
        return os.path.join(workdir, f"big-dst-{short}")

    def clear_destinations() -> None:
        """Remove every destination of this script (frees disk and page cache), then sync; not timed."""
        for name in os.listdir(workdir):
            if name.startswith("big-dst-"):
                _rmtree(os.path.join(workdir, name))
        _sync()

    runs: list[dict] = []
    checks: list[dict] = []
    for round_no in range(1, args.repeat + 1):
        if args.repeat > 1:
            _log(f"round {round_no} of {args.repeat}")
        for scenario, (src, _params) in sources.items():
            commands = [(REFERENCE, "cp", ["cp", "-a", src, dst_of("cp")])]
            if scenario == FILES:
                commands.append(
                    ("rsync -a -W", "rsync", ["rsync", "-a", "--whole-file", src + "/", dst_of("rsync") + "/"])
                )
            if cmover:
                extra = chunk_options if scenario == CHUNKED else []
                label = "cmover (chunked)" if extra else "cmover"
                if extra and parse_size(args.chunk_threshold) == 0:
                    label = "cmover (no chunks)"
                commands.append((label, "cmover", [*cmover, "copy", *jobs, *extra, src, dst_of("cmover")]))
            for tool, short, cmd in commands:
                clear_destinations()
                run = timed_run(tool, scenario, cmd, logdir)
                run["scenario"] = scenario
                runs.append(run)
                if short == "cmover":
                    _log("checking cmover's copy (size, sha256, mtime_ns) ...")
                    problems = check_files(source_info[scenario], dst_of(short))
                    checks.append(
                        {
                            "scenario": scenario,
                            "round": round_no,
                            "differences": len(problems),
                            "first": problems[:SHOWN_DIFFERENCES],
                        }
                    )
    clear_destinations()

    results = []
    for scenario, (_src, params) in sources.items():
        total = params["files"] * params["size"]
        rows = summarize([r for r in runs if r["phase"] == scenario], total, references={scenario: REFERENCE})
        for row in rows:
            row["bytes"] = total
            row["mb_per_s"] = row.pop("entries_per_s") / 1e6 if row["entries_per_s"] else None
        results.extend(rows)

    for scenario, (_src, params) in sources.items():
        print(
            f"{scenario}: {params['files']} x {human(params['size'])} = {human(params['files'] * params['size'])}"
            f" of random data; {os.cpu_count()} CPUs"
        )
    if cmover and CHUNKED in scenarios:
        print(f"chunked: cmover copy {' '.join([*jobs, *chunk_options])}".rstrip())
    for note in notes:
        print("Note: " + note)
    print_table(results, args.repeat)
    if checks:
        print()
    for check in checks:
        where = f"{check['scenario']}, round {check['round']}"
        print(f"cmover's copy vs source ({where}): {check['differences']} differences")
        for line in check["first"]:
            print(f"  {line}")
        if check["differences"] > len(check["first"]):
            print(f"  ... {check['differences'] - len(check['first'])} more")

    report = {
        "params": {
            "scenarios": scenarios,
            **{scenario: params for scenario, (_src, params) in sources.items()},
            "jobs": args.jobs,
            "chunk_options": chunk_options,
        },
        "host": {"cpus": os.cpu_count(), "system": platform.platform()},
        "timings_include_sync": True,
        "notes": notes,
        "repeat": args.repeat,
        "results": results,
        "runs": runs,
        "cmover_check": checks,
    }
    out = os.path.join(workdir, "big-results.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"Results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
