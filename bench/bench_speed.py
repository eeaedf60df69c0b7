"""The final pass at the speed of the metadata: cmover (embedded and distributed) against cp -a and rsync.

One command, interleaved rounds on the same trees::

    python bench/bench_speed.py                 # quick: a 10-file tree (fixed cost) and 20,000 files in 200 dirs
    python bench/bench_speed.py --full          # also 100,000 files in 1,000 dirs, 10^6 empty files in one
                                                # directory and 10^6 entries in 10^5 directories (long)

For every tree: a full copy (`cp -a`, `rsync -a`, `rsync -aHAX`, cmover embedded, cmover distributed) and then
a no-change pass (`rsync -a`, `rsync -aHAX`, cmover embedded with its clean-pass proof, cmover embedded with
`--full-compare`, cmover distributed), each timed with a final `sync`, rounds interleaved (this disk varies
2-4x between rounds), medians printed. Every timed full copy writes to a new XFS filesystem of its own (a
loop-mounted image: see Targets), the no-change passes then run on it. Then, in separate untimed runs, the
syscalls of each no-change pass (`perf stat` on the syscall tracepoint, else `strace -f -c`; the whole process
tree; for the distributed pass the workers' processes are attached too) and the peak RSS (VmHWM) of every
process: cmover's main process, its hub and pool children, the workers.
Last, the distributed no-change pass against the worker processes (1, 2, 4) and, in full mode, the hub's
peak RSS for a pass of 10^5 tasks.

The distributed runs use a private vhost and user on the local RabbitMQ (`rabbitmq/rabbitmq_init.sh`,
deleted at the end) and the local memcached. Their workers are the copy pass's as an operator starts them,
`scripts/run.sh start` with its defaults (a dir worker of 4 processes, a file worker of 2 per core), started
and stopped by the script; `--workers N` runs one worker of N processes on both queues instead. Run as root
(owners, the vhost). Figures go to WORKDIR/results.json too.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from support import tree  # noqa: E402

BIN = REPO / ".venv" / "bin"
QUEUES = "cmover.copy.dirs,cmover.copy.files"


# -- trees ------------------------------------------------------------------------------------------------

def _flat(root: Path, files: int, dirs: int) -> None:
    """``files`` empty files spread over ``dirs`` directories (one: all in the root)."""
    root.mkdir(parents=True)
    per = -(-files // dirs)
    for d in range(dirs):
        where = root if dirs == 1 else root / f"d{d // 1000:03d}" / f"d{d:06d}"
        where.mkdir(parents=True, exist_ok=True)
        for i in range(min(per, files - d * per)):
            os.close(os.open(where / f"f{i:07d}", os.O_CREAT | os.O_WRONLY, 0o644))


TREES = {
    "10 files": lambda p: _flat(p, 10, 1),
    "20k files": lambda p: tree.random_tree(p, seed=1, n_files=20_000, n_dirs=200),
    "100k files": lambda p: tree.random_tree(p, seed=1, n_files=100_000, n_dirs=1000),
    "1M in one dir": lambda p: _flat(p, 1_000_000, 1),
    "1M in 100k dirs": lambda p: _flat(p, 900_000, 100_000),
}
QUICK = ["10 files", "20k files"]


def entries(root: Path) -> int:
    n = 0
    for _, dirs, files in os.walk(root):
        n += len(dirs) + len(files)
    return n


# -- processes: time, syscalls, peak RSS ------------------------------------------------------------------

def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    subprocess.run(["sync"], check=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {r.returncode}: {r.stderr[-2000:]}")
    return time.monotonic() - t0


@functools.cache
def _perf_works() -> bool:
    """Whether ``perf stat`` can count the kernel's syscall tracepoint here (Debian: linux-perf; root)."""
    try:
        r = subprocess.run(["perf", "stat", "-x,", "-e", PERF_EVENT, "--", "true"], capture_output=True, text=True)
    except FileNotFoundError:
        return False
    return r.returncode == 0 and _perf_count(r.stderr) is not None


PERF_EVENT = "raw_syscalls:sys_enter"


def _perf_count(text: str) -> int | None:
    m = re.search(r"^(\d+),[^,]*," + re.escape(PERF_EVENT), text, re.M)
    return int(m.group(1)) if m else None


def syscalls(cmd: list[str], env: dict[str, str], attach: list[int] = ()) -> int:
    """Syscalls of ``cmd`` and its descendants, plus those of the ``attach`` processes (all their threads)
    while it runs.

    Counted by ``perf stat`` on the kernel's syscall-entry tracepoint where it works: it costs the traced
    processes next to nothing, so they take the same path as in the timed runs. Under ``strace -f -c``
    (the fallback) every call stops the process and a pass runs ~3x slower, which changes what a
    time-bounded step does: the embedded runner's own walk of a 20k-file tree (0.25 s at most) ran out
    of time there and started the pool, which the untraced pass never does. Both count the same calls
    where timing does not matter (rsync -a on the 20k tree: 48,531 and 48,534).
    """
    out = Path(env["BENCH_WORK"]) / f"calls-{secrets.token_hex(4)}"
    perf = _perf_works()
    tracers = []
    for i, pid in enumerate(attach):
        if perf:
            args = ["perf", "stat", "-x,", "-e", PERF_EVENT, "-o", f"{out}.a{i}", "-p", str(pid)]
        else:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
            args = ["strace", "-f", "-c", "-o", f"{out}.a{i}"] + [a for t in tids for a in ("-p", str(t))]
        tracers.append(subprocess.Popen(args, stderr=subprocess.DEVNULL))
    if tracers:
        time.sleep(0.2 if perf else 1.0)  # attached before the pass starts
    tool = ["perf", "stat", "-x,", "-e", PERF_EVENT, "-o", str(out), "--"] if perf else \
        ["strace", "-f", "-c", "-o", str(out)]
    r = subprocess.run([*tool, *cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for t in tracers:
        t.send_signal(signal.SIGINT)
        t.wait(30)
    if r.returncode != 0:
        raise RuntimeError(f"{tool[0]} {' '.join(cmd)} exited with {r.returncode}: {r.stderr[-2000:]}")
    total = 0
    for f in [out] + [Path(f"{out}.a{i}") for i in range(len(attach))]:
        text = f.read_text()
        if perf:
            total += _perf_count(text) or 0
        else:
            m = re.search(r"^\S+\s+\S+\s+\S+\s+(\d+)\s+(?:\d+\s+)?total$", text, re.M)
            total += int(m.group(1)) if m else 0
        f.unlink()
    return total


def _hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    """Children of process ``pid`` (forked by any of its threads)."""
    out = []
    try:
        for tid in [int(t) for t in os.listdir(f"/proc/{pid}/task")]:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


class Peaks:
    """Peak RSS (MiB) of every process below ``roots``, sampled every 20 ms while it runs."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self.peak: dict[int, int] = {}
        self.parent: dict[int, int] = {}
        self.seen: dict[int, float] = {}  # when each process was first seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            todo = list(self.roots)
            while todo:
                pid = todo.pop()
                self.peak[pid] = max(self.peak.get(pid, 0), _hwm(pid))
                for c in _children(pid):
                    self.parent[c] = pid
                    self.seen.setdefault(c, time.monotonic())
                    todo.append(c)
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def embedded_peaks(cmd: list[str], env: dict[str, str]) -> dict[str, int]:
    """Peak RSS of an embedded run: main, hub (its first child: started as the run starts), pool processes (the
    other children, forked with the first task the main process sends them; the largest)."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peaks = Peaks([p.pid])
    p.wait()
    peaks.stop()
    kids = sorted((pid for pid, par in peaks.parent.items() if par == p.pid), key=lambda k: peaks.seen[k])
    hub, pool = kids[:1], kids[1:]
    return {"main": peaks.peak.get(p.pid, 0), "hub": max((peaks.peak[k] for k in hub), default=0),
            "pool (max)": max((peaks.peak[k] for k in pool), default=0), "pool processes": len(pool)}


# -- the targets ------------------------------------------------------------------------------------------

class Targets:
    """Where each tool's copy of a tree lives: ``path(key)``; ``new(key, size)`` empties it before a timed full copy.

    ``fresh`` (the default, ``--target-fs new``): each key's copy is on an XFS filesystem of its own, made new
    (a sparse image of ``size`` bytes, ``mkfs.xfs``, mounted with ``-o loop`` under WORKDIR/dst) before every
    timed full copy, as a migration's target is a new filesystem. Measured on this machine's ext4 root
    filesystem: ``open(O_CREAT)`` of 20,000 empty files in one directory took 0.26-0.46 s of system time on a
    quiet filesystem, and 2-7 s in the minutes after a large tree had been deleted on it (``perf``: 60% of the
    time in the inode allocator's look at recently freed inodes); a round that deleted the previous round's copy
    and then timed the next one measured that, and in turn for each tool. Otherwise (``--target-fs same``) the
    copies are directories of WORKDIR/dst, deleted before each timed copy, as before.
    """

    def __init__(self, work: Path, fresh: bool) -> None:
        self.root = work / "dst"
        self.images = work / "images"
        self.fresh = fresh
        self.mounted: set[Path] = set()
        for stale in self._mounts_under(self.root):  # left by an interrupted run
            self._umount(stale)

    def path(self, key: str) -> Path:
        """The copy's root: it does not exist before the full copy (cp -a creates it)."""
        return self.root / key / "copy"

    def new(self, key: str, size: int) -> Path:
        """An empty place for the copy of ``key`` (a new filesystem of at least ``size`` bytes when fresh)."""
        mnt = self.root / key
        if not self.fresh:
            shutil.rmtree(mnt, ignore_errors=True)
            mnt.mkdir(parents=True)
            return self.path(key)
        if mnt in self.mounted:
            self._umount(mnt)
            self.mounted.discard(mnt)
        self.images.mkdir(exist_ok=True)
        image = self.images / f"{key}.img"
        image.unlink(missing_ok=True)
        with open(image, "wb") as f:
            f.truncate(max(size, 1 << 30))
        subprocess.run(["mkfs.xfs", "-q", "-f", str(image)], check=True)
        mnt.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
        self.mounted.add(mnt)
        return self.path(key)

    @staticmethod
    def _umount(mnt: Path) -> None:
        """Unmount ``mnt`` once nothing uses it: a distributed worker keeps a pass root open for about 2 s after
        its last task (IDLE_ROOT_SECONDS)."""
        deadline = time.monotonic() + 30
        while subprocess.run(["umount", str(mnt)], stderr=subprocess.PIPE).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{mnt} still busy after 30 s")
            time.sleep(0.5)

    def close(self) -> None:
        for mnt in sorted(self.mounted):
            self._umount(mnt)
        self.mounted.clear()
        shutil.rmtree(self.images, ignore_errors=True)

    @staticmethod
    def _mounts_under(root: Path) -> list[Path]:
        with open("/proc/self/mounts") as f:
            points = [Path(line.split()[1].replace("\\040", " ")) for line in f]
        return [p for p in points if root in p.parents]


def image_size(src: Path) -> int:
    """Room for a copy of ``src`` on XFS, with room to spare: four times its bytes, 16 KiB per entry and 4 GiB (a
    sparse file: only what is written takes space). Twice its bytes, 4 KiB per entry and 1 GiB was too little
    for the 100k tree's second round: ENOSPC."""
    total, n = 0, 0
    for top, dirs, files in os.walk(src):
        n += len(dirs) + len(files)
        for name in files:
            total += os.lstat(os.path.join(top, name)).st_size
    return 4 * total + 16384 * n + (4 << 30)


# -- the distributed site ---------------------------------------------------------------------------------

class Site:
    """A private vhost/user on the local RabbitMQ, a config.py whose mounts hold every tree, its workers."""

    def __init__(self, work: Path) -> None:
        self.dir = work / "site"
        self.dir.mkdir(exist_ok=True)
        self.user = f"cmover_bench_{secrets.token_hex(3)}"
        self.config = self.dir / "config.py"
        self.config.write_text(f"USERNAME = {self.user!r}\nsource_mount = {str(work / 'src')!r}\n"
                               f"target_mount = {str(work / 'dst')!r}\nLOG_DIR = {str(self.dir / 'log')!r}\n"
                               f"STATE_DIR = {str(work / 'state')!r}\n")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CMOVER_")}
        self.env.update(CMOVER_CONFIG=str(self.config), CMOVER_RABBITMQ_DIR=str(self.dir / "rabbitmq"),
                        BENCH_WORK=str(work))
        r = subprocess.run(["bash", str(REPO / "rabbitmq" / "rabbitmq_init.sh"), "--host", "127.0.0.1"],
                           env=self.env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"rabbitmq_init.sh failed: {r.stderr[-2000:]}")
        self.workers: list[subprocess.Popen[bytes]] = []
        self.run_sh: list[int] = []  # the main pids of the workers scripts/run.sh started, while they run

    def start_workers(self, processes: int) -> list[int]:
        """One worker with ``processes`` pool processes; return its pids (main and pool) once it is ready."""
        self.stop_workers()
        log = self.dir / f"worker-{processes}.log"
        with open(log, "wb") as out:
            w = subprocess.Popen([str(BIN / "celery"), "-A", "cmover.app", "worker", "-Q", QUEUES, "-n",
                                  f"bench{processes}@%h", "-c", str(processes), "--pool=prefork", "-l", "warning"],
                                 cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        self.workers.append(w)
        deadline = time.monotonic() + 120
        while len(_children(w.pid)) < processes:
            if w.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        time.sleep(2.0)  # its consumer connected
        return [w.pid, *_children(w.pid)]

    def start_run_sh(self) -> list[int]:
        """The copy pass's workers as an operator starts them, ``scripts/run.sh start`` with its defaults (a dir
        worker of CMOVER_DIR_CONCURRENCY processes, a file worker of CMOVER_FILE_CONCURRENCY); return their pids
        (mains and pools) once every pool process is there."""
        self.stop_workers()
        r = self._run_sh("start", CMOVER_LOGLEVEL="warning")
        if r.returncode != 0:
            raise RuntimeError(f"scripts/run.sh start failed: {r.stdout[-1000:]}{r.stderr[-2000:]}")
        pids = [p.read_text().strip() for p in sorted((self.dir / "var" / "run").glob("*.pid"))]
        self.run_sh = [int(pid) for pid in pids if pid.isdigit() and int(pid) > 0]
        # run.sh's defaults (self.env holds no CMOVER_*_CONCURRENCY): 4 dir processes, 2 file processes per core.
        expected = 4 + 2 * len(os.sched_getaffinity(0))
        deadline = time.monotonic() + 120
        while sum(len(_children(pid)) for pid in self.run_sh) < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"scripts/run.sh workers did not start: {self.run_sh}")
            time.sleep(0.2)
        time.sleep(2.0)  # their consumers connected
        return self.worker_pids()

    def _run_sh(self, command: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``scripts/run.sh COMMAND`` for this site (its config, its state under the site's var/), with ``env``."""
        return subprocess.run(["bash", str(REPO / "scripts" / "run.sh"), command], capture_output=True, text=True,
                              cwd=REPO, env={**self.env, "CMOVER_VAR": str(self.dir / "var"), **env})

    def worker_pids(self) -> list[int]:
        """Every process of the running workers: mains and pool processes."""
        mains = [w.pid for w in self.workers] + self.run_sh
        return [p for pid in mains for p in [pid, *_children(pid)]]

    def stop_workers(self) -> None:
        for w in self.workers:
            try:
                os.killpg(w.pid, signal.SIGTERM)
                w.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            try:
                os.killpg(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.workers.clear()
        if self.run_sh:
            self._run_sh("stop", CMOVER_STOP_WAIT="30")
            for pid in self.run_sh:
                try:
                    os.kill(pid, signal.SIGKILL)  # only if `stop` left it: a pass of a benchmark, nothing to finish
                except ProcessLookupError:
                    pass
            self.run_sh = []

    def close(self) -> None:
        self.stop_workers()
        for what in ("delete_vhost", "delete_user"):
            subprocess.run(["rabbitmqctl", "-q", what, self.user], capture_output=True)


# -- the benchmark ----------------------------------------------------------------------------------------

def commands(tool: str, src: Path, dst: Path, cmover: str) -> list[str]:
    s, d = str(src), str(dst)
    return {
        "cp -a": ["cp", "-a", s, d],
        "rsync -a": ["rsync", "-a", s + "/", d + "/"],
        "rsync -aHAX": ["rsync", "-aHAX", s + "/", d + "/"],
        "cmover": [cmover, "copy", "-q", "--embedded", s, d],
        "cmover --full-compare": [cmover, "copy", "-q", "--embedded", "--full-compare", s, d],
        "cmover distributed": [cmover, "copy", "-q", s, d],
    }[tool]


COPY_TOOLS = ["cp -a", "rsync -a", "rsync -aHAX", "cmover", "cmover distributed"]
NOCHANGE_TOOLS = ["rsync -a", "rsync -aHAX", "cmover", "cmover --full-compare", "cmover distributed"]
#: Where each tool's copy lives (the no-change pass runs on it).
TARGET = {"cmover --full-compare": "cmover"}


#: CLOCK_SKEW as the benchmark's configs leave it (the default).
CLOCK_SKEW = 2.0


def settle(tools: list[str], command: Callable[[str], list[str]], env: Callable[[str], dict[str, str]]) -> None:
    """Make the copies what a final pass finds: the target written by an earlier pass that ended more than
    CLOCK_SKEW after its last write. A clean-pass proof trusts target entries whose ctime is below its pass's
    end minus CLOCK_SKEW, so the pass right after a copy compares in full what the copy wrote in its last
    CLOCK_SKEW (a whole small tree); an untimed no-change pass CLOCK_SKEW later records the proof the timed
    passes use, as a migration's earlier passes do for its final one."""
    time.sleep(CLOCK_SKEW + 0.1)
    for tool in tools:
        subprocess.run(command(tool), env=env(tool), check=True, stdout=subprocess.DEVNULL)


def run_tree(name: str, work: Path, site: Site, targets: Targets, rounds: int, cmover: str) -> dict:
    src = work / "src" / re.sub(r"\W+", "_", name)
    if not src.exists():
        print(f"building {name} ...", flush=True)
        TREES[name](src)
    n = entries(src)
    env = dict(site.env)
    env_emb = {k: v for k, v in env.items() if k != "CMOVER_RABBITMQ_DIR"}
    env_emb["CMOVER_CONFIG"] = str(site.dir / "embedded.py")
    (site.dir / "embedded.py").write_text(f"STATE_DIR = {str(work / 'state')!r}\n")

    size = image_size(src)

    def key(tool: str) -> str:
        return target_key(tool, src.name)

    def dst(tool: str) -> Path:
        return targets.path(key(tool))

    def envf(tool: str) -> dict[str, str]:
        return env if "distributed" in tool else env_emb

    copy_tools = COPY_TOOLS
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        for tool in copy_tools:
            targets.new(key(tool), size)
            if "distributed" in tool:
                dst(tool).mkdir()  # a distributed pass needs its target root
            subprocess.run(["sync"], check=True)
            times.setdefault(("full copy", tool), []).append(timed(commands(tool, src, dst(tool), cmover), envf(tool)))
        settle([tool for tool in copy_tools if tool.startswith("cmover")], lambda tool: commands(tool, src, dst(tool),
                                                                                              cmover), envf)
        for tool in NOCHANGE_TOOLS:
            times.setdefault(("no-change", tool), []).append(
                timed(commands(tool, src, dst(tool), cmover), envf(tool)))
        print(f"  {name}: round {r + 1} done", flush=True)
    calls = {}
    for tool in NOCHANGE_TOOLS:
        attach = site.worker_pids() if "distributed" in tool else []
        calls[tool] = syscalls(commands(tool, src, dst(tool), cmover), envf(tool), attach)
    peaks = {"cmover no-change": embedded_peaks(commands("cmover", src, dst("cmover"), cmover), env_emb)}
    if "cmover" in copy_tools:
        targets.new(key("cmover"), size)
        peaks["cmover full copy"] = embedded_peaks(commands("cmover", src, dst("cmover"), cmover), env_emb)
    return {"tree": name, "entries": n, "times": {f"{p}|{t}": v for (p, t), v in times.items()}, "calls": calls,
            "peaks": peaks}


def target_key(tool: str, tree_dir: str) -> str:
    """The name of ``tool``'s copy of the tree in ``tree_dir`` (tools that share a copy share it: TARGET)."""
    return f"{re.sub(r'[^a-z]+', '_', TARGET.get(tool, tool))}-{tree_dir}"


def scaling(work: Path, site: Site, targets: Targets, cmover: str, rounds: int) -> dict[int, float]:
    src = work / "src" / "20k_files"
    dst = targets.path(target_key("cmover distributed", src.name))
    out = {}
    for n in (1, 2, 4):
        pids = site.start_workers(n)
        peaks = Peaks(pids)
        out[n] = statistics.median(timed(commands("cmover distributed", src, dst, cmover), site.env)
                                   for _ in range(rounds))
        peaks.stop()
        out[f"{n} rss"] = max(peaks.peak.values())
    return out


def hub_at(work: Path, targets: Targets, cmover: str, name: str) -> dict:
    """Peak RSS of the hub for a no-change pass with one task per directory (INLINE_ENTRIES = 0)."""
    src = work / "src" / re.sub(r"\W+", "_", name)
    dst = targets.path(target_key("cmover", src.name))
    cfg = work / "site" / "tasks.py"
    cfg.write_text(f"STATE_DIR = {str(work / 'state')!r}\nINLINE_ENTRIES = 0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMOVER_")}
    env["CMOVER_CONFIG"] = str(cfg)
    p = subprocess.run([cmover, "copy", "--json", "--embedded", str(src), str(dst)], env=env, capture_output=True,
                       text=True)
    tasks = json.loads(p.stdout)["totals"].get("tasks", 0) if p.returncode == 0 else 0
    return {"tasks": tasks, **embedded_peaks([cmover, "copy", "-q", "--embedded", str(src), str(dst)], env)}


def _status_mib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith(field + ":")) // 1024


def hub_growth(tasks: int) -> list[tuple[int, int]]:
    """The embedded hub's RSS (MiB) as a run's tasks grow: each task enqueued, its message put, taken and
    acknowledged, begun, counted and done through the hub's proxy, as a pass's tasks are. Returns (tasks so far,
    RSS) pairs."""
    import uuid

    from cmover.core.passes import PassKind, PassSpec
    from cmover.embedded import hub as hubmod
    from cmover.embedded.packing import pack

    process = hubmod.start_hub()
    try:
        h = hubmod.hub()
        pid = process.pid
        run = "copy-bench"
        h.open_run(run)
        spec = PassSpec(run_id=run, kind=PassKind.COPY, src_root=b"/mnt/src", dst_root=b"/mnt/dst").as_dict()
        out, mark = [], 1000
        for i in range(1, tasks + 1):
            tid = str(uuid.uuid4())
            h.enqueue(run, tid)
            h.put("cmover.copy.dirs", pack(("cmover.copy.dir", [spec, f"d{i:07d}", None], tid)))
            tag, _ = h.take(["cmover.copy.dirs"], 0.0, "bench")
            h.ack(tag)
            h.begin(run, tid)
            h.stats_add(run, {"dirs": 1, "files_scanned": 100, "files_skipped": 100})
            h.done(run, tid)
            if i in (mark, tasks):
                out.append((i, _status_mib(pid, "VmRSS")))
                mark *= 10
        return out
    finally:
        hubmod.stop_hub(process)


def hub_queued(tasks: int) -> list[tuple[str, int, int]]:
    """The embedded hub's memory (MiB: RSS, peak RSS) when ``tasks`` directory tasks are queued at once, as a
    full copy of that many directories queues them: each counted in the ledger and its packed message (0.45 KiB,
    more than a directory task's) put; then every one taken, acknowledged, begun and done. Returns (phase, RSS,
    peak)."""
    import uuid

    from cmover.embedded import hub as hubmod

    process = hubmod.start_hub()
    try:
        h = hubmod.hub()
        pid = process.pid
        run = "copy-bench"
        h.open_run(run)
        out = [("started", _status_mib(pid, "VmRSS"), _status_mib(pid, "VmHWM"))]
        tids = [str(uuid.uuid4()) for _ in range(tasks)]
        for tid in tids:
            h.enqueue(run, tid)
            h.put("cmover.copy.dirs", os.urandom(460))  # packed: incompressible
        out.append((f"{tasks:,} queued", _status_mib(pid, "VmRSS"), _status_mib(pid, "VmHWM")))
        for tid in tids:
            tag, _ = h.take(["cmover.copy.dirs"], 0.0, "bench")
            h.ack(tag)
            h.begin(run, tid)
            h.done(run, tid)
        out.append(("all taken and done", _status_mib(pid, "VmRSS"), _status_mib(pid, "VmHWM")))
        return out
    finally:
        hubmod.stop_hub(process)


def _by_round(times: dict[str, list[float]], ref: str, key: str, name: str = "") -> str:
    """The ratio ``ref``/``key`` of each round (both timed in it, back to back) as "median (lowest-highest)":
    the comparison within a round, which the machine's drift between rounds does not touch."""
    if ref not in times or key not in times:
        return ""
    each = sorted(a / b for a, b in zip(times[ref], times[key], strict=True))
    label = f" of {name}" if name else ""
    return f"{statistics.median(each):.2f}x{label} ({each[0]:.2f}-{each[-1]:.2f})"


def report(results: list[dict], scale: dict, hubs: list[dict]) -> str:
    """The tables: times, ratios (the reference tool's seconds / this tool's: above 1 is faster), syscalls."""
    lines = ["| tree (entries) | phase | tool | seconds (median) | entries/s | ratio | round by round | "
             "syscalls/entry | beyond the fixed cost |", "|---|---|---|---|---|---|---|---|---|"]
    # The fixed cost of a tool: its syscalls on the 10-file tree (start-up, imports, pool, hub, workers' idle loops).
    fixed = next((r["calls"] for r in results if r["tree"] == "10 files"), {})
    for res in results:
        n = res["entries"]
        med = {k: statistics.median(v) for k, v in res["times"].items()}
        for key, secs in med.items():
            phase, tool = key.split("|")
            ref = "cp -a" if phase == "full copy" else "rsync -a"
            ratio = f"{med[f'{phase}|{ref}'] / secs:.2f}x {ref}" if f"{phase}|{ref}" in med and tool != ref else ""
            if phase == "no-change" and tool == "cmover" and "no-change|rsync -aHAX" in med:
                ratio += f", {med['no-change|rsync -aHAX'] / secs:.2f}x rsync -aHAX"
            rounds = _by_round(res["times"], f"{phase}|{ref}", key) if tool != ref else ""
            if tool == "cmover distributed":
                rounds += "; " + _by_round(res["times"], f"{phase}|cmover", key, "cmover")
            calls = res["calls"].get(tool) if phase == "no-change" else None
            marginal = f"{(calls - fixed[tool]) / (n - 10):.2f}" if calls and tool in fixed and n > 10 else ""
            lines.append(f"| {res['tree']} ({n:,}) | {phase} | {tool} | {secs:.3f} | {n / secs:,.0f} | {ratio} | "
                         f"{rounds} | " + (f"{calls / n:.2f} | {marginal} |" if calls else "| |"))
    lines += ["", "| tree | run: process | peak RSS (MiB) |", "|---|---|---|"]
    for res in results:
        for what, pk in res["peaks"].items():
            lines.append(f"| {res['tree']} | {what}: " + ", ".join(f"{k} {v}" for k, v in pk.items()) + " | |")
    for h in hubs:
        lines.append(f"| {h['tree']}, {h['tasks']:,} tasks (INLINE_ENTRIES = 0) | hub {h['hub']}, main {h['main']}, "
                     f"pool (max) {h['pool (max)']} | |")
    if scale:
        lines += ["", "| worker processes (one worker) | distributed no-change, 20k files: seconds | peak RSS (MiB) |",
                  "|---|---|---|"]
        lines += [f"| {n} | {scale[n]:.3f} | {scale[f'{n} rss']} |" for n in (1, 2, 4)]
    return "\n".join(lines)


def _workers(text: str) -> str | int:
    """``--workers``: run.sh, or a positive number of processes."""
    if text == "run.sh":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give run.sh or a number of processes (1 or more)")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="also the 100k-file tree and the 10^6-entry cases")
    ap.add_argument("--trees", help="comma-separated tree names instead (" + ", ".join(TREES) + ")")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=str(REPO / "bench" / "_work" / "speed"))
    ap.add_argument("--workers", default="run.sh", type=_workers,
                    help="the distributed pass's workers: run.sh (default: scripts/run.sh start, as an operator "
                         "starts them: a dir and a file worker, CMOVER_DIR_CONCURRENCY and CMOVER_FILE_CONCURRENCY "
                         "processes), or N: one worker of N processes on both queues")
    ap.add_argument("--no-scaling", action="store_true", help="skip the 1/2/4 worker-process table")
    ap.add_argument("--target-fs", choices=("new", "same"), default="new",
                    help="new (default): every timed full copy writes to a new XFS filesystem (a loop-mounted "
                         "image); same: to a directory of WORKDIR, the previous copy deleted first")
    ap.add_argument("--hub-tasks", type=int, metavar="N",
                    help="only this: the embedded hub's RSS as N tasks go through it (e.g. 100000)")
    ap.add_argument("--hub-queued", type=int, metavar="N",
                    help="only this: the embedded hub's memory with N directory tasks queued at once (e.g. 100000)")
    a = ap.parse_args(argv)
    if a.hub_queued:
        print("| hub (N directory tasks queued at once) | RSS (MiB) | peak RSS (MiB) |\n|---|---|---|")
        for phase, rss, peak in hub_queued(a.hub_queued):
            print(f"| {phase} | {rss} | {peak} |")
        return 0
    if a.hub_tasks:
        print("| tasks through the hub | hub RSS (MiB) |\n|---|---|")
        for n, rss in hub_growth(a.hub_tasks):
            print(f"| {n:,} | {rss} |")
        return 0
    if os.geteuid() != 0:
        print("bench_speed.py: run as root (owners, the RabbitMQ vhost)", file=sys.stderr)
        return 2
    # What an installed cmover starts from: its modules byte-compiled (as scripts/services.sh leaves them), not
    # compiled again by every timed command where the environment keeps Python from caching them.
    subprocess.run([str(BIN / "python"), "-m", "compileall", "-q", str(REPO / "cmover")], check=True,
                   stdout=subprocess.DEVNULL)
    work = Path(a.workdir).resolve()
    (work / "src").mkdir(parents=True, exist_ok=True)
    (work / "dst").mkdir(exist_ok=True)
    cmover = str(BIN / "cmover")
    names = a.trees.split(",") if a.trees else (list(TREES) if a.full else QUICK)
    fresh = a.target_fs == "new"
    if fresh and shutil.which("mkfs.xfs") is None:
        print("bench_speed.py: mkfs.xfs not found: install xfsprogs, or give --target-fs same", file=sys.stderr)
        return 2
    targets = Targets(work, fresh)
    site = Site(work)
    results, hubs, scale = [], [], {}
    try:
        if a.workers == "run.sh":
            site.start_run_sh()
        else:
            site.start_workers(a.workers)
        for name in names:
            results.append(run_tree(name, work, site, targets, a.rounds, cmover))
        if "20k files" in names and not a.no_scaling:
            scale = scaling(work, site, targets, cmover, a.rounds)
        hubs = [{"tree": n, **hub_at(work, targets, cmover, n)} for n in names
                if n in ("20k files", "1M in 100k dirs")]
    finally:
        site.close()
        targets.close()
    text = report(results, scale, hubs)
    print(text)
    print("\nsyscalls counted with " + ("perf stat -e " + PERF_EVENT if _perf_works() else "strace -f -c"))
    (work / "results.json").write_text(json.dumps({"results": results, "scaling": {str(k): v for k, v in
                                                                                   scale.items()},
                                                   "hubs": hubs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
