"""A final pass from the change journal against the walk and against rsync -aHAX --delete.

Run as root (fanotify filesystem marks, a loop-mounted scratch ext4 so that the watcher sees only this
benchmark). See bench/README.md, "bench_journal.py", for what is measured and how to read it.

    python bench/bench_journal.py                    # 100,000 files in 1,000 dirs; 0.1 %, 1 %, 10 % changed
    python bench/bench_journal.py --files 20000 --dirs 200 --levels 1
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support import journal as journaltools  # noqa: E402
from support import snap, tree  # noqa: E402

#: The system calls that ask or change the metadata of an entry or a directory (what an MDS serves on Lustre).
METADATA = {"newfstatat", "fstatat64", "statx", "lstat", "stat", "fstat", "openat", "open", "getdents64",
            "listxattr", "llistxattr", "flistxattr", "getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr",
            "fsetxattr", "removexattr", "lremovexattr", "fremovexattr", "utimensat", "futimesat", "fchmod",
            "fchmodat", "fchown", "fchownat", "lchown", "mkdirat", "mkdir", "unlinkat", "unlink", "rmdir",
            "renameat", "renameat2", "rename", "linkat", "link", "symlinkat", "readlinkat", "readlink", "mknodat",
            "name_to_handle_at", "open_by_handle_at", "ioctl"}
_STRACE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def run(cmd: list[str], env: dict[str, str], *, strace: bool = False, notes: list[str] | None = None
        ) -> tuple[float, int, int]:
    """Run ``cmd``; return (wall seconds, metadata syscalls, all syscalls) -- the counts only with ``strace``;
    the journal passes' one-line notes are appended to ``notes``."""
    out = None
    if strace:
        fd, out = tempfile.mkstemp(prefix="strace-")
        os.close(fd)
        cmd = ["strace", "-f", "-c", "-o", out, *cmd]
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    if notes is not None:
        notes.extend(ln for ln in r.stderr.splitlines() if "pass from the change journal" in ln or "full walk" in ln)
    meta = total = 0
    if out:
        for line in Path(out).read_text().splitlines():
            m = _STRACE_ROW.match(line)
            if m:
                calls, name = int(m.group(1)), m.group(2)
                total += calls
                meta += calls if name in METADATA else 0
        os.unlink(out)
    return wall, meta, total


def change(root: bytes, rng: random.Random, fraction: float) -> tuple[int, int]:
    """Change ``fraction`` of the files at random: rewrite (40 %), delete (30 %), create (30 %), and rename a
    few directories (1 per 500 changes); return the number of changes and of the files below the renamed
    directories."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
             if not os.path.islink(os.path.join(d, f)) and os.path.isfile(os.path.join(d, f))]
    dirs = [os.path.join(d, x) for d, xs, _ in os.walk(root) for x in xs]
    n = max(1, int(len(files) * fraction))
    for i, p in enumerate(rng.sample(files, n)):
        roll = rng.random()
        if roll < 0.4:
            with open(p, "r+b") as fh:
                fh.write(rng.randbytes(max(1, min(4096, os.path.getsize(p)))))
        elif roll < 0.7:
            os.unlink(p)
        else:
            with open(os.path.join(os.path.dirname(p), b"new-%d-%d" % (i, rng.randrange(1 << 30))), "wb") as fh:
                fh.write(rng.randbytes(rng.randrange(4096)))
    moved = 0
    for i in range(max(1, n // 500)):
        # A real directory: os.walk lists symbolic links to directories among them (the tree has some).
        d = rng.choice([x for x in dirs if os.path.isdir(x) and not os.path.islink(x)])
        moved += sum(len(fs) for _, _, fs in os.walk(d))
        os.rename(d, d + b"-renamed%d" % i)
        dirs = [x for x in dirs if not x.startswith(d)]
    return n, moved


def watcher_cost(src: Path, w: journaltools.WatchProcess, n: int) -> tuple[float, float]:
    """(events/s the watcher keeps up with, CPU microseconds per event) while ``n`` files are created."""
    def cpu() -> float:
        fields = Path(f"/proc/{w.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    from cmover.journal.store import read_state

    busy = src / "busy"
    busy.mkdir()
    before = read_state(w.dir) or {}
    c0, t0 = cpu(), time.monotonic()
    for i in range(n):
        with open(busy / f"f{i}", "wb") as fh:
            fh.write(b"x")
    want = int(before.get("events", 0)) + n
    while int((read_state(w.dir) or {}).get("events", 0)) < want:
        time.sleep(0.01)
    t1, c1 = time.monotonic(), cpu()
    events = int((read_state(w.dir) or {})["events"]) - int(before.get("events", 0))
    shutil.rmtree(busy)
    return events / (t1 - t0), (c1 - c0) / events * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--dirs", type=int, default=1000)
    ap.add_argument("--levels", type=float, nargs="+", default=[0.1, 1, 10], help="percent of files changed")
    ap.add_argument("--workdir", default=str(REPO / "bench" / "_work_journal"))
    ap.add_argument("--jobs", type=int, default=4)
    args = ap.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cmover = [str(REPO / ".venv" / "bin" / "cmover")] if (REPO / ".venv" / "bin" / "cmover").exists() else ["cmover"]
    changes = work / "changes"
    config = work / "config.py"
    config.write_text(f"CHANGES_DIR = {str(changes)!r}\nLOG_DIR = {str(work / 'log')!r}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMOVER_")}
    env["CMOVER_CONFIG"] = str(config)
    env["CMOVER_RABBITMQ_DIR"] = str(work / "no-broker")
    with journaltools.loop_fs(work, size_mb=max(1024, args.files // 40)) as mnt:
        src = mnt / "src"
        t0 = time.monotonic()
        tree.random_tree(src, seed=1, n_files=args.files, n_dirs=args.dirs, weird_names=False, max_size=4096)
        print(f"tree: {args.files} files in {args.dirs} dirs built in {time.monotonic() - t0:.1f} s", flush=True)
        w = journaltools.WatchProcess(src, changes, env)
        try:
            j = ["-q", "-j", str(args.jobs)]
            targets = {k: work / f"dst-{k}" for k in ("journal", "walk", "rsync")}
            run([*cmover, "sync", *j, str(src), str(targets["journal"])], env)
            run([*cmover, "sync", *j, str(src), str(targets["walk"])], env)
            run(["rsync", "-aHAX", "--delete", f"{src}/", f"{targets['rsync']}/"], env)
            empty_src, empty_dst = mnt / "empty-src", work / "empty-dst"
            empty_src.mkdir()
            base = run([*cmover, "sync", *j, str(empty_src), str(empty_dst)], env, strace=True)
            base_j = run([*cmover, "sync", "--changes", *j, str(src), str(targets["journal"])], env, strace=True)
            print(f"start-up (empty tree, walk): {base[1]} metadata syscalls of {base[2]}; journal pass with no "
                  f"change: {base_j[1]} of {base_j[2]}")
            rng = random.Random(7)
            print("\n| changed | entries | tool | wall s | metadata syscalls beyond empty | per change | vs walk |")
            print("|---|---|---|---|---|---|---|")
            notes: list[str] = []
            for level in args.levels:
                n, moved = change(os.fsencode(src), rng, level / 100)
                notes.append(f"{level:g} %: {n} changes, {moved} files below the renamed directories")
                jw, jm, _ = run([*cmover, "sync", "--changes", *j, str(src), str(targets["journal"])], env,
                                strace=True, notes=notes)
                ww, wm, _ = run([*cmover, "sync", *j, str(src), str(targets["walk"])], env, strace=True)
                rw, rm_, _ = run(["rsync", "-aHAX", "--delete", f"{src}/", f"{targets['rsync']}/"], env, strace=True)
                for name, k in (("journal", "journal"), ("walk", "walk")):
                    diff = snap.compare_trees(src, targets[k], dir_times=True)
                    if diff:
                        print(f"WARNING: {name} target differs: {diff[:5]}")
                jb, wb = jm - base[1], wm - base[1]
                for tool, wall, meta in (("cmover --changes", jw, jb), ("cmover (walk)", ww, wb),
                                         ("rsync -aHAX --delete", rw, rm_)):
                    print(f"| {level:g} % | {n} | {tool} | {wall:.2f} | {meta} | {meta / n:.1f} | "
                          f"{meta / max(1, wb):.3f} |", flush=True)
            print("\n" + "\n".join(notes))
            # Wall times without strace (strace slows every syscall), 1 % once more.
            n, _ = change(os.fsencode(src), rng, 0.01)
            jw = run([*cmover, "sync", "--changes", *j, str(src), str(targets["journal"])], env)[0]
            ww = run([*cmover, "sync", *j, str(src), str(targets["walk"])], env)[0]
            rw = run(["rsync", "-aHAX", "--delete", f"{src}/", f"{targets['rsync']}/"], env)[0]
            print(f"\nwall, no strace, {n} changes (1 %): cmover --changes {jw:.2f} s, cmover walk {ww:.2f} s, "
                  f"rsync -aHAX --delete {rw:.2f} s; walk/journal {ww / jw:.1f}x, rsync/journal {rw / jw:.1f}x")
            rate, cpu_us = watcher_cost(src, w, 20000)
            print(f"watcher: {rate:,.0f} events/s kept up with, {cpu_us:.1f} us CPU per event")
        finally:
            w.stop()


if __name__ == "__main__":
    main()
