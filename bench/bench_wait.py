"""How long `cmover start copy --wait` takes to notice that a distributed pass is done.

Usage: python bench/bench_wait.py [--files 200] [--dirs 10] [--repeat 7] [--workdir bench/_work/wait]
                                  [--keep]

Run as root on the broker host (RabbitMQ and memcached running, as for any distributed pass). Sets up a
private site the way an operator does, with the project's own scripts and commands only:

1. a small source tree under WORKDIR/src and a config.py in WORKDIR naming a vhost of its own
   (``cmover_bench_wait_<hex>``), with source_mount/target_mount set to WORKDIR/src and WORKDIR/dst;
2. ``rabbitmq/rabbitmq_init.sh --host 127.0.0.1`` (vhost, user, 0400 password file, rabbitmq.conf in
   WORKDIR/rabbitmq, through $CMOVER_RABBITMQ_DIR);
3. ``scripts/workers.sh copy start`` (a dir and a file worker, 2 processes each, state in WORKDIR/var);
4. one full ``cmover start copy --wait``, then ``--repeat`` no-change passes ``cmover start copy --wait
   --json``, each timed from the outside (wall) and compared with the seconds the pass reports itself;
5. after each of them, ``cmover start copy`` without ``--wait`` (that pass is then let finish, untimed):
   the fixed cost of the command (interpreter, imports, planning, preflight, seeding), none of which is
   waiting, under the same load;
6. ``scripts/workers.sh copy stop``, then the vhost and user are deleted (``rabbitmqctl``) and WORKDIR
   removed unless ``--keep``.

Printed per no-change pass: the pass's own seconds (seed to the workers' last report), the wall time of
the command, wall - pass, the fixed cost (step 5) and the detection latency, wall - pass - fixed: the
time from the workers' last report to the summary being printed. Medians at the bottom.
"ok" says the pass ended "complete" with exact totals (every file scanned and skipped, none copied);
exit code 1 when one did not.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _cmover() -> str:
    venv = REPO / ".venv" / "bin" / "cmover"
    found = str(venv) if venv.exists() else shutil.which("cmover")
    if not found:
        raise SystemExit("cmover not found: run scripts/services.sh ensure_venv, or put cmover on PATH")
    return found


def make_tree(root: Path, files: int, dirs: int) -> None:
    """``files`` small files spread over ``dirs`` directories (two levels), with fixed times."""
    for i in range(files):
        d = root / f"d{i % dirs:03d}" / f"s{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"f{i:05d}"
        p.write_bytes(b"x" * (i % 4096))
        os.utime(p, ns=(1_700_000_000_000_000_000 + i, 1_700_000_000_000_000_000 + i))


class Site:
    """One private site: WORKDIR/config.py, WORKDIR/rabbitmq/, WORKDIR/var/, and its vhost on the broker."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.username = f"cmover_bench_wait_{secrets.token_hex(4)}"
        self.cmover = _cmover()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CMOVER_")}
        self.env.update(CMOVER_CONFIG=str(workdir / "config.py"), CMOVER_RABBITMQ_DIR=str(workdir / "rabbitmq"),
                        CMOVER_VAR=str(workdir / "var"), CMOVER_DIR_CONCURRENCY="2", CMOVER_FILE_CONCURRENCY="2")
        self.broker = False
        self.workers = False

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           timeout=600)
        if check and r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
        return r

    def setup(self, files: int, dirs: int) -> None:
        (self.workdir / "rabbitmq").mkdir(parents=True)
        make_tree(self.workdir / "src", files, dirs)
        (self.workdir / "dst").mkdir()
        settings = {"USERNAME": self.username, "source_mount": str(self.workdir / "src"),
                    "target_mount": str(self.workdir / "dst"), "LOG_DIR": str(self.workdir / "var" / "log")}
        (self.workdir / "config.py").write_text("".join(f"{k} = {v!r}\n" for k, v in settings.items()))
        self.broker = True
        self.run("bash", str(REPO / "rabbitmq" / "rabbitmq_init.sh"), "--host", "127.0.0.1")
        self.workers = True
        self.run("bash", str(REPO / "scripts" / "workers.sh"), "copy", "start")

    def timed(self, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
        t0 = time.perf_counter()
        r = self.run(self.cmover, *args, check=False)
        return time.perf_counter() - t0, r

    def settle(self, timeout: float = 120) -> None:
        """Poll `cmover status` until the current copy pass is complete (untimed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.run(self.cmover, "status", "copy", "--json", check=False)
            if r.returncode == 0 and json.loads(r.stdout).get("state") == "complete":
                return
            time.sleep(0.2)
        raise SystemExit(f"pass not complete after {timeout} s")

    def close(self) -> None:
        if self.workers:
            self.run("bash", str(REPO / "scripts" / "workers.sh"), "copy", "stop", check=False)
        if self.broker:
            for what in ("delete_vhost", "delete_user"):
                self.run("rabbitmqctl", "-q", what, self.username, check=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--dirs", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--workdir", type=Path, default=REPO / "bench" / "_work" / "wait")
    ap.add_argument("--keep", action="store_true", help="keep WORKDIR (logs) afterwards")
    args = ap.parse_args(argv)
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    site = Site(args.workdir.resolve())
    rows: list[tuple[float, float, float, bool]] = []
    try:
        _log(f"site {site.username} in {site.workdir}: {args.files} files in {args.dirs} directories")
        site.setup(args.files, args.dirs)
        wall, r = site.timed("start", "copy", "--wait", "--json")
        first = json.loads(r.stdout)
        _log(f"full copy: {first['totals'].get('files_copied', 0)} files copied, {first['seconds']:.2f} s, "
             f"wall {wall:.2f} s")
        for _ in range(args.repeat):
            wall, r = site.timed("start", "copy", "--wait", "--json")
            doc = json.loads(r.stdout) if r.stdout.strip() else {}
            totals = doc.get("totals", {})
            # The summary's totals are exact: every file looked at and found identical, none copied.
            ok = (r.returncode == 0 and doc.get("state") == "complete" and not totals.get("files_copied")
                  and totals.get("files_scanned") == totals.get("files_skipped") == args.files)
            # The same command without --wait right after it, so that both see the same load.
            fixed, _ = site.timed("start", "copy")
            site.settle()
            rows.append((float(doc.get("seconds", 0.0)), wall, fixed, ok))
    finally:
        site.close()
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    print(f"no-change distributed pass, {args.files} files in {args.dirs} directories, {args.repeat} runs")
    print("pass: the seconds the pass reports; wall: `cmover start copy --wait`; fixed: `cmover start copy` "
          "(no --wait) run next; latency: wall - pass - fixed")
    head = f"{'run':>3} | {'pass s':>6} | {'wall s':>6} | {'wall - pass':>11} | {'fixed s':>7} | {'latency':>7} | ok"
    print(head)
    for i, (secs, wall, fixed, ok) in enumerate(rows, 1):
        print(f"{i:>3} | {secs:6.2f} | {wall:6.2f} | {wall - secs:11.2f} | {fixed:7.2f} | {wall - secs - fixed:7.2f} | "
              f"{'y' if ok else 'n'}")
    med = [statistics.median(col) for col in zip(*[(s, w, w - s, f, w - s - f) for s, w, f, _ in rows], strict=True)]
    print(f"med | {med[0]:6.2f} | {med[1]:6.2f} | {med[2]:11.2f} | {med[3]:7.2f} | {med[4]:7.2f} |")
    print(f"detection latency (median of wall - pass - fixed): {med[4]:.2f} s")
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
