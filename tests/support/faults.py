"""The fault-injection tests' own services: a private RabbitMQ node, a private memcached, deployments on them.

Other developers run the integration tests against the shared RabbitMQ (127.0.0.1:5672) and memcached
(127.0.0.1:11211) at the same time, so the faults here (a broker restarted mid-pass, a low consumer
timeout, memcached down) must never touch those. Every session therefore starts its own:

* :class:`PrivateRabbit`: a second RabbitMQ node of the installed rabbitmq-server, named
  ``cmfault-<pid>-<hex>@localhost``, with its own Erlang cookie (``HOME`` under the session's tmp dir),
  listener and distribution ports picked free on 127.0.0.1, and its database, logs, ``rabbitmq.conf``,
  ``advanced.config``, enabled-plugins file and pid file under a tmp dir. It is started with the
  scripts of ``/usr/lib/rabbitmq/bin`` directly (the Debian wrappers in /usr/sbin switch to the
  ``rabbitmq`` user and the shared node's cookie) and controlled with ``rabbitmqctl -n <node>``. Only
  epmd (the Erlang port mapper on 4369) is shared, as with any second node on a host.
* :class:`PrivateMemcached`: ``memcached -M`` on a free port, a child process of the test session.

A :class:`FaultDeployment` is the integration tests' :class:`Deployment` pointed at them: ``MEMCACHED``
in config.py names the private memcached, and ``rabbitmq/rabbitmq_init.sh --host 127.0.0.1:<port>``
(run with a ``rabbitmqctl`` on ``PATH`` that addresses the private node) writes the broker address with
its port (cmover.core.settings reads ``HOST:PORT`` from ``rabbitmq/rabbitmq.conf``). Its workers run through
``tests/faults/seams.py``, which installs the test-only fault seams (a file whose copy kills its worker,
a slow file) before handing over to ``celery``.

When the packages or a private service cannot be had, the tests fail (they never skip). The fixtures that
hand these out are in ``tests/faults/conftest.py``; :class:`MatrixRow` writes the fault matrix's rows.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from support.deploy import (
    BIN,
    DIRS_Q,
    FILES_Q,
    REPO,
    Deployment,
    Worker,
    explain,
    run,
)
from support.metric_readers import free_port

SEAMS = REPO / "tests" / "faults" / "seams.py"  # a script: run by the workers, never imported
PYTHON = BIN / "python"
RMQ_BIN = Path("/usr/lib/rabbitmq/bin")  # the real scripts behind Debian's /usr/sbin wrappers


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- RabbitMQ -----------------------------------------------------------------------------------------------


class PrivateRabbit:
    """A RabbitMQ node of this test session only (see module doc). ``consumer_timeout`` in ms goes to its
    rabbitmq.conf; ``tick_ms`` sets ``channel_tick_interval`` in advanced.config (how often a channel
    checks its consumer timeout: once a minute by default)."""

    def __init__(self, root: Path, *, consumer_timeout: int | None = None, tick_ms: int | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.node = f"cmfault-{os.getpid()}-{secrets.token_hex(3)}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        while self.dist_port == self.port:
            self.dist_port = free_port()
        self.home = root / "home"
        self.home.mkdir(exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        self.pid_file = root / "node.pid"
        self.start_log = root / "start.log"
        self.log_dir = root / "log"
        conf = [f"listeners.tcp.default = 127.0.0.1:{self.port}"]
        if consumer_timeout is not None:
            conf.append(f"consumer_timeout = {consumer_timeout}")
        (root / "rabbitmq.conf").write_text("\n".join(conf) + "\n")
        rabbit_env = f"{{channel_tick_interval, {tick_ms}}}" if tick_ms is not None else ""
        (root / "advanced.config").write_text(f"[{{rabbit, [{rabbit_env}]}}].\n")
        (root / "enabled_plugins").write_text("[].\n")
        (root / "rabbitmq-env.conf").write_text("")  # instead of /etc/rabbitmq/rabbitmq-env.conf (the shared node's)
        # rabbitmq_init.sh calls `rabbitmqctl`: this one on PATH addresses the private node only.
        self.bin_dir = root / "bin"
        self.bin_dir.mkdir(exist_ok=True)
        wrapper = self.bin_dir / "rabbitmqctl"
        exports = " ".join(f"{k}='{v}'" for k, v in self._base_env().items())
        wrapper.write_text(f"#!/bin/sh\nexport {exports}\nexec '{RMQ_BIN}/rabbitmqctl' -n '{self.node}' \"$@\"\n")
        wrapper.chmod(0o755)
        self.restarts = 0

    def _base_env(self) -> dict[str, str]:
        r = self.root
        return {
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(r / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.log_dir),
            "RABBITMQ_CONFIG_FILE": str(r / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(r / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(r / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(r / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(self._base_env())
        return env

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run([RMQ_BIN / "rabbitmqctl", "-n", self.node, *args], env=self.env(), timeout=timeout)

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def is_up(self) -> bool:
        return self.ctl("-q", "await_startup", "--timeout", "5", timeout=30).returncode == 0

    def start(self) -> None:
        """Start the node (``rabbitmq-server -detached``) and wait until its app has booted."""
        if not (RMQ_BIN / "rabbitmq-server").exists():
            pytest.fail(f"{RMQ_BIN}/rabbitmq-server not found: the rabbitmq-server package is required")
        self.pid_file.unlink(missing_ok=True)
        # All three streams redirected: the detached VM would otherwise keep a pipe open.
        with open(self.start_log, "ab") as out:
            r = subprocess.run([RMQ_BIN / "rabbitmq-server", "-detached"], env=self.env(), cwd=self.root,
                               stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=60)
        if r.returncode != 0:
            pytest.fail(f"private RabbitMQ node {self.node} did not start:\n{self._logs()}")
        w = self.ctl("-q", "wait", str(self.pid_file), "--timeout", "90", timeout=120)
        if w.returncode != 0:
            pytest.fail(f"private RabbitMQ node {self.node} did not boot:\n{explain(w)}\n{self._logs()}")

    def stop(self) -> None:
        """Stop the node (``rabbitmqctl stop``, waiting for the VM to exit); SIGKILL it if that fails."""
        pid = self.pid()
        self.ctl("-q", "stop", str(self.pid_file), timeout=120)
        if pid is not None and _pid_alive(pid):
            deadline = time.monotonic() + 30
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)

    def restart_node(self, down_seconds: float = 2.0) -> None:
        """Stop the whole node (the Erlang VM exits), stay down ``down_seconds``, start it again."""
        self.stop()
        time.sleep(down_seconds)
        self.start()
        self.restarts += 1

    def restart_app(self, down_seconds: float = 2.0) -> None:
        """``rabbitmqctl stop_app`` (every connection closed, queues stopped), then ``start_app``."""
        r = self.ctl("-q", "stop_app", timeout=120)
        assert r.returncode == 0, explain(r)
        time.sleep(down_seconds)
        r = self.ctl("-q", "start_app", timeout=120)
        assert r.returncode == 0, explain(r)
        self.restarts += 1

    def queues(self, vhost: str) -> dict[str, tuple[int, int]]:
        """Real-time (not sampled) depths of the vhost's queues: name -> (ready, unacknowledged)."""
        r = self.ctl("--silent", "list_queues", "-p", vhost, "name", "messages_ready", "messages_unacknowledged",
                     timeout=60)
        assert r.returncode == 0, explain(r)
        out = {}
        for line in r.stdout.splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                out[parts[0]] = (int(parts[1]), int(parts[2]))
        return out

    def delete_vhost_and_user(self, name: str) -> None:
        for what in ("delete_vhost", "delete_user"):
            self.ctl("-q", what, name, timeout=60)

    def _logs(self) -> str:
        parts = []
        for p in [self.start_log, *sorted(self.log_dir.glob("*.log"))]:
            try:
                parts.append(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}")
            except OSError:
                pass
        return "\n".join(parts)


# -- memcached ----------------------------------------------------------------------------------------------


class PrivateMemcached:
    """``memcached -M`` on a free loopback port, a child process of this session (stop/start at will)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "memcached.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(b"version\r\n")
                return s.recv(100).startswith(b"VERSION")
        except OSError:
            return False

    def start(self) -> None:
        exe = shutil.which("memcached")
        if exe is None:
            pytest.fail("memcached not found: the memcached package is required")
        user = ["-u", "memcache" if _user_exists("memcache") else "root"] if os.geteuid() == 0 else []
        with open(self.log, "ab") as out:
            # -M: errors instead of evictions (the completion ledger must never lose keys silently).
            self.proc = subprocess.Popen([exe, "-p", str(self.port), "-U", "0", "-l", "127.0.0.1", "-M",
                                          "-m", "256", "-c", "1024", *user],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"private memcached on {self.address} did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def ensure_up(self) -> None:
        if not self.answers():
            self.stop()
            self.start()


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


# -- deployments on the private services --------------------------------------------------------------------


class FaultDeployment(Deployment):
    """An integration :class:`Deployment` whose broker and memcached are the session's private ones."""

    def __init__(self, root: Path, name: str, src: Path, dst: Path, rabbit: PrivateRabbit,
                 memcached: PrivateMemcached, **settings: Any) -> None:
        super().__init__(root, name, src, dst, MEMCACHED=memcached.address, **settings)
        self.rabbit = rabbit
        self.memcached = memcached

    def env(self) -> dict[str, str]:
        env = super().env()
        env["PATH"] = f"{self.rabbit.bin_dir}:{env.get('PATH', '')}"
        return env

    def init_broker(self) -> subprocess.CompletedProcess[str]:
        """rabbitmq_init.sh on the private node; rabbitmq/rabbitmq.conf gets 127.0.0.1:<its port>."""
        r = run(["bash", REPO / "rabbitmq" / "rabbitmq_init.sh", "--host", f"127.0.0.1:{self.rabbit.port}"],
                env=self.env(), timeout=180)
        assert r.returncode == 0, explain(r)
        assert (self.rabbitmq_dir / "rabbitmq.conf").read_text().strip() == f"127.0.0.1:{self.rabbit.port}"
        self._private_broker = True
        return r

    def start_worker(self, node: str, queues: Sequence[str] = (DIRS_Q, FILES_Q), concurrency: int = 2,
                     prefix: Sequence[str] = (), args: Sequence[str] = ()) -> Worker:
        """A worker run through tests/faults/seams.py (seams switched on by CMFAULT_* in ``extra_env``)."""
        return super().start_worker(node, queues, concurrency, prefix=(*prefix, str(PYTHON), str(SEAMS)),
                                    args=args)

    def worker_logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {w.node} ({w.log})\n{w.log_text()[-tail:]}" for w in self.workers)

    def close(self) -> list[str]:
        problems = []
        for w in self.workers:
            w.terminate()
        for w in self.workers:
            w.stop()
            if w.alive():
                problems.append(f"worker {w.node} (pid {w.pid}) survived SIGKILL")
        if getattr(self, "_private_broker", False) and self.rabbit.pid() is not None:
            self.rabbit.delete_vhost_and_user(self.username)
            self._private_broker = False
        self.workers.clear()
        return problems


class FaultDeployments:
    """Creates deployments on the private services and tears all of them down."""

    def __init__(self, root: Path, rabbit: PrivateRabbit, memcached: PrivateMemcached) -> None:
        self.root = root
        self.rabbit = rabbit
        self.memcached = memcached
        self.made: list[FaultDeployment] = []

    def new(self, name: str, src: Path, dst: Path, *, rabbit: PrivateRabbit | None = None,
            **settings: Any) -> FaultDeployment:
        d = FaultDeployment(self.root / f"site-{name}", name, src, dst, rabbit or self.rabbit, self.memcached,
                            **settings)
        self.made.append(d)
        return d

    def close(self) -> None:
        problems = [p for d in reversed(self.made) for p in d.close()]
        assert not problems, "\n".join(problems)


# -- the fault matrix ---------------------------------------------------------------------------------------


class MatrixRow:
    """One scenario's numbers for the fault matrix (bench/fault_matrix.py), written as a JSON line to the
    file named by $CMFAULT_MATRIX (nothing is written without it) and printed."""

    def __init__(self, fault: str) -> None:
        self.fault = fault
        self.t0 = time.monotonic()

    def record(self, *, injected: int, completed: bool, entries: int, differences: int, note: str = "") -> None:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]  # pytest sets it while a test runs
        row = {"fault": self.fault, "injected": injected, "completed": completed, "entries": entries,
               "differences": differences, "seconds": round(time.monotonic() - self.t0, 1), "note": note,
               "test": test}
        print(f"\n[fault matrix] {json.dumps(row)}")
        path = os.environ.get("CMFAULT_MATRIX")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")


