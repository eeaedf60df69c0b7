"""Distributed deployments for the integration and fault tests: sites, broker users, worker processes.

A :class:`Deployment` is what an operator sets up for one site: a directory holding ``config.py`` (with a
USERNAME unique to this test session), ``rabbitmq/`` written by ``rabbitmq/rabbitmq_init.sh`` (vhost, user,
0400 password file, ``rabbitmq.conf``) and ``celery worker`` processes started as separate process groups
(:class:`Worker`). :meth:`DeploymentSet.close` stops the workers (SIGTERM, then SIGKILL of their process
group after a timeout) and deletes the vhosts and users. :func:`ensure_services` brings RabbitMQ and
memcached up through ``scripts/services.sh`` and fails the test when it cannot (tests never skip).
:func:`weird_tree` builds the shared source tree of the distributed copy tests. The fixtures that hand
these out are in ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import snap, tree
from support.metric_readers import free_port

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


#: The local node's management HTTP API (scripts/services.sh ensure_rabbitmq_api) and its administrator,
#: who may log in only from localhost. A call takes milliseconds where rabbitmqctl starts an Erlang VM.
RABBITMQ_API = "http://127.0.0.1:15672"
RABBITMQ_ADMIN = "guest:guest"


def rabbitmq_api(method: str, path: str) -> int:
    """One management API call without a body; the HTTP status (404 too, as a number)."""
    req = urllib.request.Request(RABBITMQ_API + path, method=method, headers={
        "Authorization": "Basic " + base64.b64encode(RABBITMQ_ADMIN.encode()).decode()})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


# -- services -----------------------------------------------------------------------------------------------


def ensure_services() -> None:
    """RabbitMQ and memcached up on 127.0.0.1 (started when missing); a failure fails the tests."""
    for fn in ("ensure_rabbitmq", "ensure_rabbitmq_api", "ensure_memcached"):
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
                  "LOG_DIR": str(root / "log"), "STATE_DIR": str(root / "state"), **settings}
        self.config.write_text("".join(f"{k} = {v!r}\n" for k, v in values.items()))

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CMOVER_")}
        env["CMOVER_CONFIG"] = str(self.config)
        env["CMOVER_RABBITMQ_DIR"] = str(self.rabbitmq_dir)
        env.update(self.extra_env)
        return env

    def init_broker(self, api: bool = True) -> subprocess.CompletedProcess[str]:
        """rabbitmq/rabbitmq_init.sh --host 127.0.0.1: vhost, user, password file and rabbitmq.conf; through the
        management API (``--api``, the administrator's credentials in rabbitmq/rabbitmq-api.conf, 0400) unless
        ``api`` is false (then through rabbitmqctl, as on the broker host)."""
        self._broker_touched = True
        args: list[str] = []
        if api:
            self.rabbitmq_dir.mkdir(parents=True, exist_ok=True)
            cred = self.rabbitmq_dir / "rabbitmq-api.conf"
            if not cred.exists():
                cred.write_text(RABBITMQ_ADMIN + "\n")
                cred.chmod(0o400)
            args = ["--api", RABBITMQ_API]
        r = run(["bash", REPO / "rabbitmq" / "rabbitmq_init.sh", *args, "--host", "127.0.0.1"], env=self.env(),
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
            for what in ("vhosts", "users"):
                code = rabbitmq_api("DELETE", f"/api/{what}/{self.username}")
                if code not in (204, 404):
                    problems.append(f"DELETE /api/{what}/{self.username} answered {code}")
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


# -- source trees -------------------------------------------------------------------------------------------

#: The subtree of the weird tree a sub-path pass starts at: its parent (non-UTF-8) holds other entries too.
SUBPATH = b"dir-\xff\xfe/sub \xe9"


@dataclass(frozen=True)
class SourceTree:
    path: Path
    counts: dict[str, int]
    socket: bytes  # relative path of the one socket (recreated on the target, as rsync -D does)
    snapshot: dict[bytes, dict[str, Any]]

    def non_dir_entries(self) -> int:
        return sum(1 for rec in self.snapshot.values() if rec["type"] != "dir")

    def diff(self, dst: Path | bytes) -> list[str]:
        """compare_trees(src, dst): every entry, the socket included."""
        return snap.compare_trees(self.path, dst)


def _add_specials(root: bytes) -> bytes:
    """A FIFO, a character device, a socket and a nested non-UTF-8 subtree for the sub-path pass; the
    socket's relative path."""
    ref = tree.REFERENCE_NS
    t = {"atime_ns": ref - 5 * 10**9 + 7, "mtime_ns": ref - 10**9 + 3}
    special = b"special \xe9"
    spec: dict[bytes, Any] = {
        special: tree.Dir(mode=0o755),
        special + b"/fifo": tree.Fifo(mode=0o640, uid=1001, gid=1002, **t),
        special + b"/null": tree.Device(1, 3, mode=0o600, **t),
        special + b"/sock": tree.Socket(),
        SUBPATH + b"/deep\nest/leaf ": tree.Dir(mode=0o750),
    }
    for i in range(60):
        where = SUBPATH if i % 3 == 0 else SUBPATH + b"/deep\nest" if i % 3 == 1 else SUBPATH + b"/deep\nest/leaf "
        spec[where + b"/file-\xe9-%02d" % i] = tree.File(b"x" * (i * 37), atime_ns=ref - i, mtime_ns=ref - 2 * i - 1)
    spec[SUBPATH + b"/link"] = tree.Link(b"deep\nest/file-\xe9-01")
    tree.build(root, spec)
    return special + b"/sock"


def weird_tree(root: Path) -> SourceTree:
    """A few thousand entries under ``root`` with every weird name kind, special files and a nested non-UTF-8
    subtree. Read-only for the tests: every copy goes to its own target."""
    counts = tree.random_tree(root, seed=20250101, n_files=3000, n_dirs=150, weird_names=True)
    sock = _add_specials(os.fsencode(root))
    return SourceTree(root, counts, sock, snap.snapshot(root))


# -- the Prometheus exporter of a site -------------------------------------------------------------------

#: Samples of one scrape: (name, labels) -> value.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_samples(text: str) -> Samples:
    """Every sample of a Prometheus exposition: (sample name, labels) -> value; a sample seen twice fails."""
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"sample {key} exposed twice"
            out[key] = s.value
    return out


class Exporter:
    """``cmover exporter --port PORT`` of a site, in its own process, with its output in files."""

    def __init__(self, dep: Deployment, name: str) -> None:
        self.port = free_port()
        self.out = dep.root / f"exporter-{name}.out"
        self.err = dep.root / f"exporter-{name}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen([str(CMOVER), "exporter", "--port", str(self.port)], cwd=REPO,
                                         env=dep.env(), stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        deadline = time.monotonic() + 30
        while not self.stdout().endswith("\n"):
            if self.proc.poll() is not None:
                pytest.fail(f"cmover exporter exited with {self.proc.returncode}:\n{self.stderr()}")
            if time.monotonic() > deadline:
                pytest.fail(f"cmover exporter printed no start line in 30 s:\n{self.stderr()}")
            time.sleep(0.05)

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def scrape(self) -> Samples:
        """One scrape over HTTP: it must answer 200 with the text format; every sample by (name, labels)."""
        with urllib.request.urlopen(self.url, timeout=30) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = resp.read().decode()
        return parse_samples(text)

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> int:
        """SIGTERM, then the exit code (SIGKILL and a failure after 20 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"cmover exporter ignored SIGTERM for 20 s:\n{self.stderr()}")
