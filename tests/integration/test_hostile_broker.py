"""Hostile publishers and leaked credentials, against the real RabbitMQ and real ``celery worker`` processes.

* A pickle-serialized message on a cmover queue is refused by the worker (JSON only): the pickle is never
  loaded (loading it would create a file), and the worker goes on to run a normal pass.
* The broker password of a site never appears in worker logs or in ``cmover`` output, whether the broker
  works, refuses the login or cannot be reached; the password file is mode 0400.
"""

from __future__ import annotations

import re
import stat
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from support.deploy import DIRS_Q, FILES_Q, Deployment, DeploymentSet, explain

pytestmark = pytest.mark.integration


class _CreatesFileWhenUnpickled:
    """Unpickling this runs ``open(path, "w")``: the file exists afterwards."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def _connection(site: Deployment) -> Any:
    from kombu import Connection

    password = (site.rabbitmq_dir / f"rabbitmq_{site.username}.conf").read_text().strip()
    return Connection(hostname="127.0.0.1", port=5672, userid=site.username, password=password,
                      virtual_host=site.username, connect_timeout=5)


def _publish_pickle(site: Deployment, queue: str, task: str, payload: Any) -> str:
    """A Celery protocol-2 task message whose body is a pickle, as an attacker on the vhost can send it."""
    tid = str(uuid.uuid4())
    headers = {"lang": "py", "task": task, "id": tid, "root_id": tid, "parent_id": None, "group": None,
               "retries": 0, "eta": None, "expires": None, "timelimit": [None, None], "argsrepr": "",
               "kwargsrepr": "", "origin": "attacker", "ignore_result": True}
    with _connection(site) as conn:
        producer = conn.Producer()
        producer.publish(((payload, "", None), {}, {"callbacks": None, "errbacks": None, "chain": None,
                                                     "chord": None}),
                         exchange=queue, routing_key=queue, serializer="pickle", headers=headers,
                         correlation_id=tid, delivery_mode=2, retry=True)
    return tid


def _queue_depth(site: Deployment, queue: str) -> int:
    with _connection(site) as conn:
        _, n, _ = conn.default_channel.queue_declare(queue, passive=True)
        return int(n)


def _small_tree(root: Path) -> None:
    for d in range(3):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(5):
            (root / f"d{d}" / f"f{f}").write_bytes(b"x" * (d * 10 + f))


def test_pickle_message_is_refused_and_the_worker_keeps_working(deployments: DeploymentSet, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _small_tree(src)
    dst.mkdir()
    site = deployments.new("pickle", src, dst)
    site.init_broker()
    w = site.start_worker("p1", (DIRS_Q, FILES_Q), concurrency=1)
    w.wait_ready()

    markers = [tmp_path / "unpickled-dirs", tmp_path / "unpickled-files"]
    ids = [_publish_pickle(site, DIRS_Q, "cmover.copy.dir", _CreatesFileWhenUnpickled(markers[0])),
           _publish_pickle(site, FILES_Q, "cmover.copy.files", _CreatesFileWhenUnpickled(markers[1]))]
    deadline = time.monotonic() + 60
    while not any(m.exists() for m in markers) and (
            _queue_depth(site, DIRS_Q) + _queue_depth(site, FILES_Q)
            or len(re.findall(r"untrusted content of type pickle", w.log_text())) < 2):
        assert time.monotonic() < deadline, f"the pickle messages were not consumed:\n{w.log_text()[-3000:]}"
        assert w.alive(), w.log_text()[-3000:]
        time.sleep(0.2)
    time.sleep(0.5)  # a (wrongly) accepted task would run right after its message was taken
    assert [m.exists() for m in markers] == [False, False], "a pickle was loaded by the worker"
    log = w.log_text()
    assert "Refusing to deserialize untrusted content of type pickle (application/x-python-serialize)" in log
    for tid in ids:
        assert not re.search(rf"Task cmover\.copy\.\w+\[{tid}\] (received|succeeded)", log), log[-3000:]
    assert w.alive()
    assert _queue_depth(site, DIRS_Q) == _queue_depth(site, FILES_Q) == 0  # not requeued to be refused forever

    run_id = site.start_pass()
    st = site.wait_complete(run_id, timeout=120)
    assert st["totals"].get("files_copied") == 15 or sorted(p.name for p in dst.rglob("f*")) == sorted(
        p.name for p in src.rglob("f*")), st
    for p in src.rglob("f*"):
        assert (dst / p.relative_to(src)).read_bytes() == p.read_bytes()
    assert w.alive()


def _assert_no_password(password: str, *texts: str) -> None:
    for t in texts:
        assert password not in t, f"the broker password leaked into:\n{t[-3000:]}"


def test_password_never_in_worker_logs_or_cmover_output(deployments: DeploymentSet, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _small_tree(src)
    dst.mkdir()
    site = deployments.new("creds", src, dst)
    site.init_broker()
    pw_file = site.rabbitmq_dir / f"rabbitmq_{site.username}.conf"
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o400
    password = pw_file.read_text().strip()
    assert len(password) == 32

    # 1. A working broker: worker banner and task logs, and the commands an operator runs.
    w = site.start_worker("c1", (DIRS_Q, FILES_Q))
    w.wait_ready()
    outputs = []
    r = site.cmover("start", "copy", "--wait")
    assert r.returncode == 0, explain(r)
    outputs += [r.stdout, r.stderr]
    for args in (("status", "copy"), ("status", "copy", "--json"), ("errors",)):
        r = site.cmover(*args)
        outputs += [r.stdout, r.stderr]
    log = w.log_text()
    assert re.search(rf"amqp://{re.escape(site.username)}:\*\*@127\.0\.0\.1:5672/", log), \
        "the worker banner shows the broker URL (masked)"
    _assert_no_password(password, log, *outputs)
    w.stop()

    # 2. A broker that refuses the login (wrong password in the file) and 3. one that cannot be reached.
    wrong = "Wr0ngPassw0rdThatMustNotLeak" + uuid.uuid4().hex[:8]
    pw_file.chmod(0o600)
    pw_file.write_text(wrong + "\n")
    pw_file.chmod(0o400)
    for host, why in (("127.0.0.1", r"ACCESS_REFUSED"), ("127.0.0.1:1", r"Connection refused")):
        (site.rabbitmq_dir / "rabbitmq.conf").write_text(host + "\n")
        for args in (("start", "copy"), ("errors",), ("stop",)):
            r = site.cmover(*args, timeout=60)
            assert r.returncode == 2, explain(r)
            lines = r.stderr.splitlines()
            assert len(lines) == 1 and re.search(why, lines[0]) and host in lines[0], explain(r)
            _assert_no_password(wrong, r.stdout, r.stderr)
            _assert_no_password(password, r.stdout, r.stderr)
        # The run's state is unknown (exit 3), with the reason on its "why" line.
        r = site.cmover("status", "copy", timeout=60)
        why_line = [line for line in r.stdout.splitlines() if line.startswith("why ")]
        assert r.returncode == 3 and len(why_line) == 1, explain(r)
        assert re.search(why, why_line[0]) and f"from the broker at {host} (" in why_line[0], explain(r)
        _assert_no_password(wrong, r.stdout, r.stderr)
        _assert_no_password(password, r.stdout, r.stderr)
        r = site.cmover("-vv", "status", "copy", timeout=60)  # debug logging of kombu/amqp included
        assert r.returncode == 3 and re.search(why, r.stdout), explain(r)
        _assert_no_password(wrong, r.stdout, r.stderr)
        bad = site.start_worker(f"bad{host.count(':')}", (DIRS_Q,), concurrency=1)
        deadline = time.monotonic() + 60
        while not re.search(r"(Cannot connect to|consumer: Connection to broker lost|ACCESS_REFUSED)",
                            bad.log_text()):
            assert time.monotonic() < deadline, bad.log_text()[-3000:]
            assert bad.alive() or bad.log_text(), "the worker died without a word"
            time.sleep(0.2)
        bad.stop()
        text = bad.log_text()
        _assert_no_password(wrong, text)
        _assert_no_password(password, text)
