"""The pictures of README.md's monitoring section: graphite-web's graphs of a real distributed migration.

Usage: python bench/monitoring_pictures.py [--files 40000] [--dirs 800] [--out docs/monitoring]
                                           [--workdir bench/_work/pictures] [--keep]

Run as root on a Debian or Ubuntu machine with RabbitMQ and memcached (``scripts/services.sh ensure_rabbitmq``
and ``ensure_memcached``; this script calls them). It sets up everything else it needs with the project's own
scripts and commands, all of it under WORKDIR, and removes it at the end (unless ``--keep``):

1. a carbon-cache of its own (``scripts/services.sh ensure_carbon`` with CMOVER_CARBON_DIR in WORKDIR, free
   ports, and 2-second points: the graphs look like those of cron's minute, 30 times faster) and graphite-web
   reading it (the Debian package, served on loopback as the tests do);
2. a generated tree (tests/support/tree.random_tree: FILES files up to 16 KiB in DIRS directories, plus 8 files of
   48 MiB copied in chunks of 8 MiB) and a config.py naming a vhost of its own (``rabbitmq/rabbitmq_init.sh``);
3. celery workers on two hosts, ``mover1.example.org`` and ``mover2.example.org`` (each in a UTS namespace of
   its own), consuming the queues of all three passes: two processes on the first, one on the second. Each
   host gets a CPU quota (a cgroup: 16% of a CPU for the first, 8% for the second), so that the passes last
   minutes instead of seconds, as they do on a real filesystem, and the graphs have something to show;
4. what ``send_graphite.py`` does, twice a second, for the whole migration;
5. a migration as an operator runs it: a first copy pass (``cmover start copy --wait``), paused for 10 s
   half-way (``cmover pause copy``, ``cmover resume copy``); 5% of the files changed, then the second copy
   pass that takes just those; extras planted on the target and ``cmover start delete --wait``;
   ``cmover start dirtime --wait``;
6. one PNG per main graph of the graphite-web dashboard (dashboards/generate.py: files and bytes per second,
   files per second by node, queue depths, outstanding tasks), with the dashboard's own targets and
   parameters, over the time of the migration, written to OUT.

Prints the passes' summaries and the pictures written (name, size).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tree builder and metric_readers live with the tests (tests/support)
sys.path.insert(0, str(REPO / "dashboards"))

import generate  # noqa: E402
from support import metric_readers, tree  # noqa: E402

HOSTS = ("mover1.example.org", "mover2.example.org")
QUEUES = ",".join(f"cmover.{p}.{q}" for p in ("copy", "delete", "dirtime") for q in ("dirs", "files"))
#: The panels pictured, and the file each goes to.
PICTURES = {
    "Copy: files per second": "copy-files-per-second.png",
    "Copy: bytes per second": "copy-bytes-per-second.png",
    "Copy: files copied per second by node": "copy-files-per-second-by-node.png",
    "Queue depths": "queue-depths.png",
    "Outstanding tasks": "outstanding-tasks.png",
}
SIZE = {"width": 640, "height": 260}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 900) -> str:
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return r.stdout


def _free_carbon_port() -> int:
    """A plaintext port for carbon whose pickle (+1) and cache-query (+4999) ports are free as well."""
    for _ in range(50):
        port = metric_readers.free_port()
        if port + 4999 < 65536 and all(_is_free(p) for p in (port + 1, port + 4999)):
            return port
    raise SystemExit("no free ports for a carbon-cache")


def _is_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class CpuQuota:
    """A cgroup (v2, or v1's cpu controller) holding at most ``percent`` of one CPU for the processes put in it."""

    def __init__(self, name: str, percent: int) -> None:
        v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
        self.path = Path("/sys/fs/cgroup") / name if v2 else Path("/sys/fs/cgroup/cpu") / name
        self.path.mkdir()
        period = 100_000
        if v2:
            (self.path / "cpu.max").write_text(f"{period * percent // 100} {period}\n")
        else:
            (self.path / "cpu.cfs_period_us").write_text(f"{period}\n")
            (self.path / "cpu.cfs_quota_us").write_text(f"{period * percent // 100}\n")
        self.procs = self.path / "cgroup.procs"

    def remove(self) -> None:
        for _ in range(50):  # the last processes take a moment to leave once they exited
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


class Migration:
    """A private site in WORKDIR with its carbon, graphite-web, workers and vhost."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.username = f"cmover_pictures_{secrets.token_hex(4)}"
        self.prefix = "cmover"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CMOVER_")}
        self.env.update(CMOVER_CONFIG=str(workdir / "config.py"), CMOVER_RABBITMQ_DIR=str(workdir / "rabbitmq"))
        self.carbon_env = {**os.environ, "CMOVER_CARBON_DIR": str(workdir / "carbon"),
                           "CMOVER_CARBON_PORT": str(_free_carbon_port()), "CMOVER_CARBON_RETENTION": "2s:1d"}
        self.workers: list[subprocess.Popen[bytes]] = []
        self.quotas: list[CpuQuota] = []
        self.web: metric_readers.GraphiteWeb | None = None
        self.sender: metric_readers.SenderLoop | None = None
        self.broker = False

    def setup(self, files: int, dirs: int) -> None:
        for fn in ("ensure_rabbitmq", "ensure_memcached", "ensure_graphite_web", "ensure_venv"):
            metric_readers.ensure(fn)
        _log("starting a carbon-cache of its own")
        host, port, whisper = _run(["bash", "-c", "source scripts/services.sh && ensure_carbon && carbon_info"],
                                   env=self.carbon_env).split()
        _log(f"generating {files} files in {dirs} directories")
        src, dst = self.workdir / "src", self.workdir / "dst"
        tree.random_tree(src, seed=18, n_files=files, n_dirs=dirs, weird_names=False)
        big = src / "big"
        big.mkdir()
        block = os.urandom(1 << 20)
        for i in range(8):
            with open(big / f"huge-{i:02d}", "wb") as f:
                for _ in range(48):
                    f.write(block)
        dst.mkdir()
        settings = {"USERNAME": self.username, "source_mount": str(src), "target_mount": str(dst),
                    "LOG_DIR": str(self.workdir / "log"), "GRAPHITE_HOST": host, "GRAPHITE_PORT": int(port),
                    "GRAPHITE_PREFIX": self.prefix, "REPORT_INTERVAL": 0.5, "CHUNK_THRESHOLD": 32 << 20,
                    "CHUNK_SIZE": 8 << 20, "BATCH": 100}
        (self.workdir / "config.py").write_text("".join(f"{k} = {v!r}\n" for k, v in settings.items()))
        self.broker = True
        _run(["bash", str(REPO / "rabbitmq" / "rabbitmq_init.sh"), "--host", "127.0.0.1"], env=self.env)
        self.web = metric_readers.GraphiteWeb(self.workdir / "graphite-web", Path(whisper), host)
        celery = str(REPO / ".venv" / "bin" / "celery")
        for i, name in enumerate(HOSTS, start=1):
            quota = CpuQuota(f"{self.username}_{i}", 16 // i)
            self.quotas.append(quota)
            log = open(self.workdir / f"worker-{i}.log", "wb")  # noqa: SIM115 (kept open by the worker)
            self.workers.append(subprocess.Popen(
                ["unshare", "--uts", "--", "sh", "-c", 'echo $$ > "$1" && hostname "$0" && shift && exec "$@"', name,
                 str(quota.procs), celery, "-A", "cmover.app",
                 "worker", "-Q", QUEUES, "-n", f"pictures{i}@%h", "-c", str(3 - i), "--pool=prefork",
                 "--prefetch-multiplier=1", "-l", "info"],
                cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))
        deadline = time.monotonic() + 120
        for i in range(1, len(HOSTS) + 1):
            while b" ready." not in (self.workdir / f"worker-{i}.log").read_bytes():
                if time.monotonic() > deadline:
                    raise SystemExit(f"worker {i} not ready, see {self.workdir}/worker-{i}.log")
                time.sleep(0.2)
        self.sender = metric_readers.SenderLoop(self.env, pause=0.5)

    def cmover(self, *args: str) -> str:
        return _run([str(REPO / ".venv" / "bin" / "cmover"), *args], env=self.env)

    def run_pass(self, kind: str, pause_at: int = 0) -> None:
        """``cmover start KIND --wait``; with ``pause_at``, paused for 10 s once that many files are copied."""
        _log(f"{kind} pass")
        waiter = subprocess.Popen([str(REPO / ".venv" / "bin" / "cmover"), "start", kind, "--wait", "--json"],
                                  cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        if pause_at:
            while json.loads(self.cmover("status", kind, "--json"))["totals"].get("files_copied", 0) < pause_at:
                time.sleep(0.5)
            _log(f"pausing the {kind} pass for 10 s")
            self.cmover("pause", kind)
            time.sleep(10)
            self.cmover("resume", kind)
        out, _ = waiter.communicate(timeout=3600)
        if waiter.returncode not in (0, 1):
            raise SystemExit(f"cmover start {kind} --wait exited {waiter.returncode}")
        summary = json.loads(out)
        print(f"{kind}: {summary.get('state')} in {summary.get('seconds')} s, {json.dumps(summary.get('totals'))}",
              flush=True)

    def pictures(self, out: Path, start: float, end: float) -> None:
        assert self.web
        out.mkdir(parents=True, exist_ok=True)
        panels = {p.title: p for p in generate.PANELS}
        for title, name in PICTURES.items():
            params = {**generate.graphite_web_params(panels[title], self.prefix), **SIZE,
                      "from": str(int(start)), "until": str(int(end)), "tz": "UTC"}
            data = self.web.png(params)
            (out / name).write_bytes(data)
            print(f"{out / name}: {len(data) / 1024:.0f} KiB", flush=True)

    def close(self) -> None:
        if self.sender:
            self.sender.stop()
        for w in self.workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in self.workers:
            try:
                w.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(w.pid, signal.SIGKILL)
                w.wait()
        for quota in self.quotas:
            quota.remove()
        if self.web:
            self.web.stop()
        pidfile = self.workdir / "carbon" / "run" / "carbon-cache-a.pid"
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
        if self.broker:
            for what in ("delete_vhost", "delete_user"):
                subprocess.run(["rabbitmqctl", "-q", what, self.username], capture_output=True, timeout=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the README's monitoring pictures from a real migration.")
    parser.add_argument("--files", type=int, default=40000, help="small files in the source tree (default 40000)")
    parser.add_argument("--dirs", type=int, default=800, help="directories in the source tree (default 800)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "monitoring", help="where the PNGs go")
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "_work" / "pictures")
    parser.add_argument("--keep", action="store_true", help="keep WORKDIR (tree, logs, whisper files)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: the workers get host names of their own (unshare --uts)")
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    args.workdir.mkdir(parents=True)
    m = Migration(args.workdir.resolve())
    try:
        m.setup(args.files, args.dirs)
        time.sleep(6)  # some idle points first, as before a migration starts
        start = time.time() - 5
        m.run_pass("copy", pause_at=args.files // 2)
        src, dst = m.workdir / "src", m.workdir / "dst"
        changed = sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())[::20]
        for p in changed:  # 5% of the files change before the next pass
            p.write_bytes(p.read_bytes() + b"changed")
        time.sleep(6)
        m.run_pass("copy")
        for i in range(20):
            d = dst / f"retired-{i:02d}"
            d.mkdir()
            for j in range(200):
                (d / f"old-{j:03d}").write_bytes(b"")
        m.run_pass("delete")
        m.run_pass("dirtime")
        time.sleep(8)  # the end: queues empty, nothing outstanding
        m.pictures(args.out, start, time.time())
    finally:
        m.close()
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
