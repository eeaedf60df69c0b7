"""Fixtures of the integration tests: the services, per-test broker deployments and worker processes.

A :class:`Deployment` is what an operator sets up for one site: a directory holding ``config.py`` (with a
USERNAME unique to this test session), ``rabbitmq/`` written by ``rabbitmq/rabbitmq_init.sh`` (vhost, user,
0400 password file, ``rabbitmq.conf``) and ``celery worker`` processes started as separate process groups.
Teardown stops the workers (SIGTERM, then SIGKILL of their process group after a timeout) and deletes the
vhost and the user. RabbitMQ and memcached are brought up by ``scripts/services.sh``; when that fails the
tests fail (they never skip).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import treeutil

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
CELERY = BIN / "celery"
CMOVER = BIN / "cmover"
DIRS_Q = "cmover.copy.dirs"
FILES_Q = "cmover.copy.files"

#: Every vhost/user of this session starts with this prefix; a crashed session's leftovers never collide.
SESSION_PREFIX = f"cmover_it_{secrets.token_hex(4)}"

_TASK_DONE_RE = re.compile(r"Task cmover\.copy\.\w+\[[0-9a-f-]+\] succeeded")


def run(cmd: Sequence[Any], *, timeout: float = 120, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to completion (never through a shell) and return it; output as text."""
    return subprocess.run([os.fsencode(c) if isinstance(c, bytes) else str(c) for c in cmd],
                          capture_output=True, text=True, errors="replace", timeout=timeout,
                          env=env, cwd=cwd or REPO, stdin=subprocess.DEVNULL)


def explain(r: subprocess.CompletedProcess[str]) -> str:
    return f"{r.args!r} exited {r.returncode}\n--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}"


def rabbitmqctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run(["rabbitmqctl", *args], timeout=timeout)


# -- services -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def services() -> None:
    """RabbitMQ and memcached up on 127.0.0.1 (started when missing); a failure fails the tests."""
    for fn in ("ensure_rabbitmq", "ensure_memcached"):
        try:
            r = run(["bash", REPO / "scripts" / "services.sh", fn], timeout=600)
        except subprocess.TimeoutExpired:
            pytest.fail(f"scripts/services.sh {fn} timed out")
        if r.returncode != 0:
            pytest.fail(f"scripts/services.sh {fn} failed: RabbitMQ/memcached are required\n{explain(r)}")
    with socket.create_connection(("127.0.0.1", 5672), timeout=5):
        pass
    with socket.create_connection(("127.0.0.1", 11211), timeout=5) as s:
        s.sendall(b"version\r\n")
        assert s.recv(100).startswith(b"VERSION"), "memcached does not answer on 127.0.0.1:11211"


# -- workers ------------------------------------------------------------------------------------------------


class Worker:
    """One ``celery worker`` process (its own process group) with its log in a file."""

    def __init__(self, deployment: Deployment, node: str, queues: Sequence[str], concurrency: int,
                 prefix: Sequence[str] = (), args: Sequence[str] = ()) -> None:
        self.node = node
        self.log = deployment.root / f"worker-{node}.log"
        cmd = [*prefix, str(CELERY), "-A", "cmover.app", "worker", "-Q", ",".join(queues), "-n", f"{node}@%h",
               "-c", str(concurrency), "--pool=prefork", "--prefetch-multiplier=1", "-l", "info", *args]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=deployment.env(), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self._terminated = False

    def log_text(self) -> str:
        return self.log.read_bytes().decode("utf-8", "replace")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(rf"{re.escape(self.node)}@\S+ ready\.", self.log_text()):
                return
            if self.proc.poll() is not None:
                pytest.fail(f"worker {self.node} exited with {self.proc.returncode} before it was ready:\n"
                            f"{self.log_text()[-4000:]}")
            time.sleep(0.2)
        pytest.fail(f"worker {self.node} not ready after {timeout} s:\n{self.log_text()[-4000:]}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pool_children(self) -> list[int]:
        r = run(["pgrep", "-P", str(self.pid)], timeout=10)
        return [int(p) for p in r.stdout.split()]

    def tasks_succeeded(self) -> int:
        return len(_TASK_DONE_RE.findall(self.log_text()))

    def kill_group(self) -> None:
        """SIGKILL every process left in this worker's process group (main process and pool children)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        """Ask for a warm shutdown (SIGTERM, once)."""
        if self.alive() and not self._terminated:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL of the whole group after ``timeout``."""
        if self.alive():
            try:
                self.terminate()
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill_group()  # also pool children orphaned by a killed main process
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


# -- deployments --------------------------------------------------------------------------------------------


class Deployment:
    """A site: config.py + rabbitmq/ in ``root``, a vhost and user on the broker, and its workers."""

    def __init__(self, root: Path, name: str, src: Path, dst: Path, **settings: Any) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.username = f"{SESSION_PREFIX}_{name}"
        self.src = src
        self.dst = dst
        self.config = root / "config.py"
        self.rabbitmq_dir = root / "rabbitmq"
        self.workers: list[Worker] = []
        self.extra_env: dict[str, str] = {}  # e.g. CMOVER_LOG_MAX_BYTES for a worker log test
        self._broker_touched = False
        values = {"USERNAME": self.username, "source_mount": str(src), "target_mount": str(dst),
                  "LOG_DIR": str(root / "log"), **settings}
        self.config.write_text("".join(f"{k} = {v!r}\n" for k, v in values.items()))

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CMOVER_")}
        env["CMOVER_CONFIG"] = str(self.config)
        env["CMOVER_RABBITMQ_DIR"] = str(self.rabbitmq_dir)
        env.update(self.extra_env)
        return env

    def init_broker(self) -> subprocess.CompletedProcess[str]:
        """rabbitmq/rabbitmq_init.sh --host 127.0.0.1: vhost, user, password file and rabbitmq.conf."""
        self._broker_touched = True
        r = run(["bash", REPO / "rabbitmq" / "rabbitmq_init.sh", "--host", "127.0.0.1"], env=self.env(),
                timeout=180)
        assert r.returncode == 0, explain(r)
        return r

    def cmover(self, *args: str | bytes, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return run([CMOVER, *args], env=self.env(), timeout=timeout)

    def start_worker(self, node: str, queues: Sequence[str] = (DIRS_Q, FILES_Q), concurrency: int = 2,
                     prefix: Sequence[str] = (), args: Sequence[str] = ()) -> Worker:
        w = Worker(self, node, queues, concurrency, prefix, args)
        self.workers.append(w)
        return w

    def start_pass(self, *args: str | bytes) -> str:
        """``cmover start copy [ARGS]`` without waiting; return the run id it printed."""
        r = self.cmover("start", "copy", *args, timeout=60)
        assert r.returncode == 0, explain(r)
        m = re.search(r"started copy pass (\S+) at", r.stdout)
        assert m, explain(r)
        return m.group(1)

    def status(self, run_id: str | None = None) -> dict[str, Any]:
        r = self.cmover("status", "copy", "--json", *(["--run", run_id] if run_id else []), timeout=60)
        assert r.returncode == 0, explain(r)
        return json.loads(r.stdout)

    def wait_complete(self, run_id: str, timeout: float,
                      on_status: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll ``cmover status --json --run`` until the run is complete; return that status."""
        deadline = time.monotonic() + timeout
        st: dict[str, Any] = {}
        while time.monotonic() < deadline:
            st = self.status(run_id)
            if on_status:
                on_status(st)
            if st["state"] == "complete":
                return st
            assert st["state"] == "running", st
            time.sleep(0.3)
        logs = "\n".join(f"--- {w.node}\n{w.log_text()[-3000:]}" for w in self.workers)
        pytest.fail(f"run {run_id} not complete after {timeout} s; last status {st}\n{logs}")

    def close(self) -> list[str]:
        """Stop the workers, delete the vhost and the user; return what went wrong."""
        problems = []
        for w in self.workers:  # all warm shutdowns run at once
            w.terminate()
        for w in self.workers:
            w.stop()
            if w.alive():
                problems.append(f"worker {w.node} (pid {w.pid}) survived SIGKILL")
        if self._broker_touched:
            for what in ("delete_vhost", "delete_user"):
                r = rabbitmqctl("-q", what, self.username)
                if r.returncode != 0 and "does not exist" not in r.stderr + r.stdout:
                    problems.append(explain(r))
        return problems


class DeploymentSet:
    """Creates deployments and tears all of them down."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[Deployment] = []

    def new(self, name: str, src: Path, dst: Path, **settings: Any) -> Deployment:
        d = Deployment(self.root / f"site-{name}", name, src, dst, **settings)
        self.made.append(d)
        return d

    def close(self) -> None:
        problems = [p for d in reversed(self.made) for p in d.close()]
        assert not problems, "\n".join(problems)


@pytest.fixture
def deployments(services: None, tmp_path: Path) -> Iterator[DeploymentSet]:
    ds = DeploymentSet(tmp_path)
    yield ds
    ds.close()


@pytest.fixture(scope="module")
def module_deployments(services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeploymentSet]:
    ds = DeploymentSet(tmp_path_factory.mktemp("sites"))
    yield ds
    ds.close()


# -- source trees -------------------------------------------------------------------------------------------

#: The subtree of the weird tree a sub-path pass starts at: its parent (non-UTF-8) holds other entries too.
SUBPATH = b"dir-\xff\xfe/sub \xe9"


@dataclass(frozen=True)
class SourceTree:
    path: Path
    counts: dict[str, int]
    socket: bytes  # relative path of the one socket (never copied)
    snapshot: dict[bytes, dict[str, Any]]

    def non_dir_entries(self) -> int:
        return sum(1 for rec in self.snapshot.values() if rec["type"] != "dir")

    def diff_without_socket(self, dst: Path | bytes) -> list[str]:
        """compare_trees(src, dst) after dropping the expected "socket missing on target" line."""
        expected = f"{self.socket!r}: missing on target (socket)"
        diffs = treeutil.compare_trees(self.path, dst)
        assert expected in diffs, f"the socket was copied, or compare_trees changed: {diffs[:20]}"
        return [d for d in diffs if d != expected]


def _add_specials(root: bytes) -> bytes:
    """A FIFO, a character device, a socket and a nested non-UTF-8 subtree for the sub-path pass."""
    special = root + b"/special \xe9"
    os.mkdir(special, 0o755)
    os.mkfifo(special + b"/fifo", 0o640)
    os.mknod(special + b"/null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    sock_path = special + b"/sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(sock_path)
    for p in (b"/fifo", b"/null"):
        os.utime(special + p, ns=(treeutil.REFERENCE_NS - 5 * 10**9 + 7, treeutil.REFERENCE_NS - 10**9 + 3),
                 follow_symlinks=False)
    os.chown(special + b"/fifo", 1001, 1002)
    sub = root + b"/" + SUBPATH
    os.makedirs(sub + b"/deep\nest/leaf ", 0o750)
    for i in range(60):
        where = sub if i % 3 == 0 else sub + b"/deep\nest" if i % 3 == 1 else sub + b"/deep\nest/leaf "
        with open(where + b"/file-\xe9-%02d" % i, "wb") as f:
            f.write(b"x" * (i * 37))
        os.utime(where + b"/file-\xe9-%02d" % i, ns=(treeutil.REFERENCE_NS - i, treeutil.REFERENCE_NS - 2 * i - 1))
    os.symlink(b"deep\nest/file-\xe9-01", sub + b"/link")
    return b"special \xe9/sock"


@pytest.fixture(scope="session")
def weird_tree(tmp_path_factory: pytest.TempPathFactory) -> SourceTree:
    """A few thousand entries with every weird name kind, special files and a nested non-UTF-8 subtree.

    Read-only for the tests: every copy goes to its own target.
    """
    root = tmp_path_factory.mktemp("weird") / "src"
    counts = treeutil.make_tree(root, seed=20250101, n_files=3000, n_dirs=150, weird_names=True)
    sock = _add_specials(os.fsencode(root))
    return SourceTree(root, counts, sock, treeutil.snapshot(root))
