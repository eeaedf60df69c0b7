"""Time copies of a small-file tree whose every file and directory carries a user xattr and POSIX ACLs.

Usage: python bench/bench_fidelity.py [--files 20000] [--dirs 200] [--seed 1] [--workdir bench/_work]
                                      [--jobs N] [--cmover CMD] [--repeat R] [--baseline] [--sample 100]

The tree (tests/support/tree.random_tree) is generated once under WORKDIR/fid-src and reused while the parameters
are unchanged; every run then (re)applies, idempotently, a user xattr to every file and directory, an
access ACL to all of them (one recursive setfacl) and a default ACL to the directories. Timed: full copy
with cp -a, rsync -aHAX and cmover, then a no-change pass with rsync -aHAX and cmover; ratios are against
rsync -aHAX. With --baseline cmover also copies a plain tree of the same seed (WORKDIR/fid-plain) and the
cost of the xattrs and ACLs is shown as a percentage. Every timing ends with `sync`; --repeat R gives
medians. Results are printed and written to WORKDIR/fid-results.json. See bench/README.md.
"""

import argparse
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import time

from bench_copy import (
    REPO,
    _log,
    _rmtree,
    _sync,
    check_copy,
    find_cmover,
    prepare_source,
    print_check,
    snap,
    summarize,
    timed_run,
    tree,
)

MAX_SIZE = 16384
FULL = "full copy"
NO_CHANGE = "no-change"
REFERENCE = "rsync -aHAX"
XATTR = "user.cmover.bench"
XATTR_VALUE = b"cmover benchmark attribute value"
ACCESS_ACL = "u:4242:r--"
DEFAULT_ACL = "g:77:r-x"
ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"
SHOWN_DIFFERENCES = 10


def decorate(src: str) -> None:
    """Give every directory and regular file under src (src included) the user xattr and the access ACL, and
    every directory the default ACL. Symlinks are left alone (Linux refuses user xattrs on them) and never
    followed. Idempotent: a second call changes nothing but ctimes."""
    src_b = os.fsencode(src)
    pending = [src_b]
    os.setxattr(src_b, XATTR, XATTR_VALUE, follow_symlinks=False)
    while pending:
        with os.scandir(pending.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif not entry.is_file(follow_symlinks=False):
                    continue
                os.setxattr(entry.path, XATTR, XATTR_VALUE, follow_symlinks=False)
    # -P: a physical walk, symlinks are not followed (some in the tree point outside it, e.g. to /etc/passwd).
    subprocess.run(["setfacl", "-R", "-P", "-m", ACCESS_ACL, src], check=True)
    subprocess.run(["find", src, "-type", "d", "-exec", "setfacl", "-d", "-m", DEFAULT_ACL, "{}", "+"], check=True)


def count_decorations(records: dict) -> dict[str, int]:
    """How many entries of a support.snap.snapshot carry the xattr and ACLs; files and dirs for comparison."""
    counts = {"files": 0, "dirs": 0, XATTR: 0, ACL_ACCESS: 0, ACL_DEFAULT: 0}
    for rec in records.values():
        if rec["type"] in ("file", "dir"):
            counts[rec["type"] + "s"] += 1
        for name in (XATTR, ACL_ACCESS, ACL_DEFAULT):
            if name in rec.get("xattrs", {}) or name in rec.get("acls", {}):
                counts[name] += 1
    return counts


def sample_check(source: dict, src: str, target: str, sample: list[bytes]) -> list[str]:
    """Read the xattrs of the sampled entries (relative bytes paths) on source and target directly
    (os.listxattr/os.getxattr, not following symlinks) and describe every difference. The xattr and the
    access ACL must be present on every sampled entry, the default ACL on every sampled directory."""
    if not os.path.isdir(target):
        return [f"{target}: no target directory"]
    problems = []
    for rel in sample:
        kind = source[rel]["type"]
        expected = {XATTR, ACL_ACCESS} | ({ACL_DEFAULT} if kind == "dir" else set())
        values = {}
        for side, root in (("source", src), ("target", target)):
            path = os.path.join(os.fsencode(root), rel)
            try:
                names = set(os.listxattr(path, follow_symlinks=False))
                values[side] = {n: os.getxattr(path, n, follow_symlinks=False) for n in names}
            except OSError as exc:
                problems.append(f"{rel!r}: cannot read xattrs on {side}: {exc}")
                break
        else:
            missing = expected - values["target"].keys()
            if missing:
                problems.append(f"{rel!r}: missing on target: {', '.join(sorted(missing))}")
            if values["target"].keys() != values["source"].keys():
                problems.append(
                    f"{rel!r}: xattr names differ: source={sorted(values['source'])} target={sorted(values['target'])}"
                )
            for name in sorted(values["source"].keys() & values["target"].keys()):
                if values["source"][name] != values["target"][name]:
                    problems.append(f"{rel!r}: {name} differs")
    return problems


def print_table(results: list[dict], repeat: int) -> None:
    print()
    print(f"{'tool':<12} {'phase':<10} {'seconds':>9} {'entries/s':>10} {'ratio':>7}  vs")
    for r in results:
        seconds = f"{r['seconds']:.2f}" if r["seconds"] else "FAILED"
        rate = f"{r['entries_per_s']:,.0f}" if r["entries_per_s"] else "-"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "-"
        failed = f"  ({r['failures']} of {repeat} runs failed)" if r["failures"] else ""
        runs = ""
        if repeat > 1 and r["all_seconds"]:
            runs = "  runs " + ", ".join(f"{s:.2f}" for s in r["all_seconds"])
        print(f"{r['tool']:<12} {r['phase']:<10} {seconds:>9} {rate:>10} {ratio:>7}  {r['ratio_vs']}{failed}{runs}")
    if repeat > 1:
        print(f"Seconds are the median of {repeat} rounds.")
    print()
    print("All timings include a final `sync`; the source tree is in the page cache (read just before).")
    print(f"Ratio = {REFERENCE} seconds / this tool's seconds (above 1 is faster).")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark described in the module docstring; returns the exit code (0 even if cmover fails)."""
    parser = argparse.ArgumentParser(description="Compare cmover copy with rsync -aHAX on a tree full of xattrs/ACLs.")
    parser.add_argument("--files", type=int, default=20_000, help="regular files in the tree (default 20000)")
    parser.add_argument("--dirs", type=int, default=200, help="directories in the tree (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="tree seed (default 1)")
    parser.add_argument(
        "--workdir", default=os.path.join(REPO, "bench", "_work"), help="where trees go (default bench/_work)"
    )
    parser.add_argument("--jobs", type=int, help="passed to cmover copy as --jobs N")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all runs; the table shows medians")
    parser.add_argument("--cmover", help="cmover command (default: .venv/bin/cmover of the repo, else PATH)")
    parser.add_argument("--baseline", action="store_true", help="also time cmover on the same tree without xattrs/ACLs")
    parser.add_argument(
        "--sample", type=int, default=100, help="files (and as many dirs) whose xattrs are read back (default 100)"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        _log("not running as root: owners are not varied, and setting them may fail for the tools")

    workdir = os.path.abspath(args.workdir)
    logdir = os.path.join(workdir, "fid-logs")
    os.makedirs(os.path.join(logdir, "plain"), exist_ok=True)
    with open(tree.__file__, "rb") as gen:
        # A changed generator means a different tree even for the same numbers.
        generator = hashlib.blake2b(gen.read(), digest_size=8).hexdigest()
    params = {"files": args.files, "dirs": args.dirs, "seed": args.seed, "max_size": MAX_SIZE, "generator": generator}
    decoration = {"xattr": XATTR, "value": XATTR_VALUE.decode(), "access_acl": ACCESS_ACL, "default_acl": DEFAULT_ACL}
    # The decoration is part of the recorded parameters: another one means a rebuilt tree, no stale ACLs.
    counts = prepare_source(workdir, {**params, "decoration": decoration}, name="fid-src")
    src = os.path.join(workdir, "fid-src")
    _log("setting the xattr and the ACLs (idempotent) ...")
    start = time.perf_counter()
    decorate(src)
    _sync()
    _log(f"  {time.perf_counter() - start:.1f} s")
    plain = os.path.join(workdir, "fid-plain")
    if args.baseline:
        plain_counts = prepare_source(workdir, params, name="fid-plain")
        if plain_counts != counts:
            _log(f"the plain tree differs in counts: {plain_counts} vs {counts}")

    cmover = find_cmover(args.cmover)
    if cmover is None:
        _log("cmover not found (no .venv/bin/cmover, none on PATH, no --cmover): timing cp -a and rsync only")
    jobs = ["--jobs", str(args.jobs)] if args.jobs else []

    _log("reading the source tree (snapshot for the final check; also warms the page cache) ...")
    source_snapshot = snap.snapshot(src)
    decorations = count_decorations(source_snapshot)
    if args.baseline:
        snap.snapshot(plain)
    rng = random.Random(args.seed)
    files = sorted(rel for rel, rec in source_snapshot.items() if rec["type"] == "file")
    dirs = sorted(rel for rel, rec in source_snapshot.items() if rec["type"] == "dir")
    sample = rng.sample(files, min(args.sample, len(files))) + rng.sample(dirs, min(args.sample, len(dirs)))

    def target(tool: str) -> str:
        path = os.path.join(workdir, f"fid-dst-{tool}")
        _rmtree(path)
        _sync()
        return path

    runs: list[dict] = []
    baseline_runs: list[dict] = []
    checks: dict[str, dict] = {}
    samples: dict[str, list[str]] = {}
    dst_rsync = os.path.join(workdir, "fid-dst-rsync")
    dst_cmover = os.path.join(workdir, "fid-dst-cmover")
    dst_plain = os.path.join(workdir, "fid-dst-plain")
    for round_no in range(1, args.repeat + 1):
        if args.repeat > 1:
            _log(f"round {round_no} of {args.repeat}")
        dst_cp = target("cp")
        runs.append(timed_run("cp -a", FULL, ["cp", "-a", src, dst_cp], logdir))
        target("rsync")
        runs.append(timed_run(REFERENCE, FULL, ["rsync", "-aHAX", src + "/", dst_rsync + "/"], logdir))
        if round_no == 1:
            samples["cp -a"] = sample_check(source_snapshot, src, dst_cp, sample)
            samples[REFERENCE] = sample_check(source_snapshot, src, dst_rsync, sample)
        if cmover:
            target("cmover")
            runs.append(timed_run("cmover", FULL, [*cmover, "copy", *jobs, src, dst_cmover], logdir))
            if round_no == 1:
                _log("checking cmover's copy ...")
                checks["after_full_copy"] = check_copy(source_snapshot, dst_cmover)
                samples["cmover"] = sample_check(source_snapshot, src, dst_cmover, sample)
            if args.baseline:
                target("plain")
                cmd = [*cmover, "copy", *jobs, plain, dst_plain]
                baseline_runs.append(timed_run("cmover", FULL, cmd, os.path.join(logdir, "plain")))
        if cmover:
            # What a final pass finds: a target written by an earlier pass that ended more than CLOCK_SKEW (the
            # default 2 s) after its last write. The pass right after a copy compares in full what the copy wrote
            # in its last CLOCK_SKEW (the clean-pass proof's margin; here the whole tree), and records the proof
            # the timed pass uses.
            time.sleep(2.1)
            subprocess.run([*cmover, "copy", "-q", *jobs, src, dst_cmover], check=True, stdout=subprocess.DEVNULL)
            if args.baseline:
                subprocess.run([*cmover, "copy", "-q", *jobs, plain, dst_plain], check=True, stdout=subprocess.DEVNULL)
        runs.append(timed_run(REFERENCE, NO_CHANGE, ["rsync", "-aHAX", src + "/", dst_rsync + "/"], logdir))
        if cmover:
            runs.append(timed_run("cmover", NO_CHANGE, [*cmover, "copy", *jobs, src, dst_cmover], logdir))
            if args.baseline:
                cmd = [*cmover, "copy", *jobs, plain, dst_plain]
                baseline_runs.append(timed_run("cmover", NO_CHANGE, cmd, os.path.join(logdir, "plain")))
    entries = counts["entries"]
    references = {FULL: REFERENCE, NO_CHANGE: REFERENCE}
    results = summarize(runs, entries, references)
    baseline = summarize(baseline_runs, entries, references) if baseline_runs else []
    for row in baseline:
        row["tool"] = "cmover, plain tree"
        decorated = next((r for r in results if r["tool"] == "cmover" and r["phase"] == row["phase"]), None)
        row["xattr_acl_cost_percent"] = (
            (decorated["seconds"] / row["seconds"] - 1) * 100
            if decorated and decorated["seconds"] and row["seconds"]
            else None
        )

    print(
        f"Tree: {entries:,} entries ({counts['files']:,} files of 0-{MAX_SIZE} bytes, {counts['dirs']:,} dirs,"
        f" {counts['symlinks']:,} symlinks), seed {args.seed}; {os.cpu_count()} CPUs"
    )
    print(
        f"On the source: {XATTR} on {decorations[XATTR]:,}, an access ACL ({ACCESS_ACL}) on"
        f" {decorations[ACL_ACCESS]:,} of {decorations['files'] + decorations['dirs']:,} files and dirs;"
        f" a default ACL ({DEFAULT_ACL}) on {decorations[ACL_DEFAULT]:,} of {decorations['dirs']:,} dirs"
    )
    print_table(results, args.repeat)
    if baseline:
        print()
        print("Without xattrs/ACLs (same tree, plain):")
        for row in baseline:
            seconds = f"{row['seconds']:.2f} s" if row["seconds"] else "FAILED"
            cost = row["xattr_acl_cost_percent"]
            cost_text = f"; xattrs/ACLs cost {cost:+.0f}%" if cost is not None else ""
            print(f"  cmover {row['phase']:<10} {seconds}{cost_text}")
    if cmover:
        checks["after_no_change"] = check_copy(source_snapshot, dst_cmover)
        samples["cmover after no-change"] = sample_check(source_snapshot, src, dst_cmover, sample)
    print()
    for tool, problems in samples.items():
        print(f"xattrs/ACLs read back on {len(sample)} sampled entries, {tool}: {len(problems)} differences")
        for line in problems[:SHOWN_DIFFERENCES]:
            print(f"  {line}")
        if len(problems) > SHOWN_DIFFERENCES:
            print(f"  ... {len(problems) - SHOWN_DIFFERENCES} more")
    if cmover:
        for label, key in (("after the full copy", "after_full_copy"), ("after the no-change pass", "after_no_change")):
            print_check(checks[key], label)

    report = {
        "params": {**params, "decoration": decoration, "jobs": args.jobs, "baseline": args.baseline},
        "counts": counts,
        "decorations": decorations,
        "host": {"cpus": os.cpu_count(), "system": platform.platform()},
        "timings_include_sync": True,
        "repeat": args.repeat,
        "results": results,
        "baseline": baseline,
        "runs": runs,
        "baseline_runs": baseline_runs,
        "cmover_check": checks,
        "sample_checks": {
            tool: {"entries": len(sample), "differences": problems} for tool, problems in samples.items()
        },
    }
    out = os.path.join(workdir, "fid-results.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"Results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
