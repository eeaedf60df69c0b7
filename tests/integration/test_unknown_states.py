"""`cmover status` and `--wait` say "unknown", never "complete", when the completion path cannot be vouched for.

One site (module-scoped) whose memcached is a private one, so that it can be frozen (SIGSTOP) for a moment.

* The broker cannot be read (vhost permissions revoked: the connection is refused with NOT_ALLOWED; or a
  queue held exclusively by another connection: RESOURCE_LOCKED on the passive declare). Before, a
  failing passive declare read as "0 messages" (a complete run stayed "complete" with its dead letters
  unread), and a broker that refused the connection made `status` and `--wait` end with exit 2 in the
  middle of a pass. Now: unknown (exit 3) with the reason, and `--wait` reads again until the broker
  answers (or gives "unknown" back after its patience). A queue that was never declared still reads 0.
* A task published while the ledger could not count it (memcached frozen during its parent's
  ``enqueue``): the count can reach 0 while that task is still to run. Before, that read "complete"; now
  the parent marks the run untrusted as soon as memcached answers again, and the mark outlives the run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
from support.deploy import BIN, CMOVER, REPO, Deployment, DeploymentSet, explain, rabbitmqctl
from support.metric_readers import free_port
from support.tree import random_tree

pytestmark = pytest.mark.integration

DIRTIME_QS = ("cmover.dirtime.dirs", "cmover.dirtime.files")


@pytest.fixture(scope="module")
def memcached() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A private memcached on 127.0.0.1: (port, process)."""
    binary = shutil.which("memcached")
    assert binary, "memcached is needed (scripts/services.sh installs it)"
    port = free_port()
    proc = subprocess.Popen([binary, "-p", str(port), "-U", "0", "-l", "127.0.0.1", "-M",
                             *(["-u", "root"] if os.geteuid() == 0 else [])],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "private memcached did not start"
            time.sleep(0.05)
    yield port, proc
    os.kill(proc.pid, signal.SIGCONT)  # in case a test failed while it was frozen
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def site(module_deployments: DeploymentSet, memcached: tuple[int, subprocess.Popen[bytes]],
         tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """A copied tree (`cmover start copy --wait`, complete) and a worker of the copy queues."""
    top = tmp_path_factory.mktemp("unknown")
    src, dst = top / "src", top / "dst"
    random_tree(src, seed=13, n_files=40, n_dirs=6, weird_names=False, owners=False)
    dst.mkdir()
    dep = module_deployments.new("unknown", src, dst, MEMCACHED=f"127.0.0.1:{memcached[0]}")
    dep.init_broker()
    dep.start_worker("w1").wait_ready()
    r = dep.cmover("start", "copy", "--wait", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "complete", explain(r)
    return dep


def _status(dep: Deployment, *args: str) -> tuple[int, dict[str, Any], str]:
    r = dep.cmover("status", *args, "--json", timeout=60)
    try:
        return r.returncode, json.loads(r.stdout), r.stderr
    except ValueError:
        pytest.fail(f"no JSON status: {explain(r)}")


def _revoke(dep: Deployment) -> None:
    r = rabbitmqctl("-q", "clear_permissions", "-p", dep.username, dep.username)
    assert r.returncode == 0, explain(r)


def _grant(dep: Deployment) -> None:
    r = rabbitmqctl("-q", "set_permissions", "-p", dep.username, dep.username, ".*", ".*", ".*")
    assert r.returncode == 0, explain(r)


def _broker_url(dep: Deployment) -> str:
    password = (dep.rabbitmq_dir / f"rabbitmq_{dep.username}.conf").read_text().strip()
    return f"amqp://{dep.username}:{password}@127.0.0.1:5672/{dep.username}"


# -- the broker ---------------------------------------------------------------------------------------------


def test_a_broker_that_refuses_the_reading_makes_the_run_unknown(site: Deployment) -> None:
    rc, st, _ = _status(site, "copy")
    assert (rc, st["state"]) == (0, "complete"), st
    _revoke(site)
    try:
        rc, st, err = _status(site, "copy")
        plain = site.cmover("status", "copy", timeout=60)
        every_rc, every, _ = _status(site)
    finally:
        _grant(site)
    assert every_rc == 3 and [(p["pass"], p["state"]) for p in every["passes"]] == [("copy", "unknown")], every
    # Before: exit 2, "cannot reach the broker", and nothing about the run.
    assert (rc, st["state"], st["run_id"]) == (3, "unknown", st["run_id"]), (rc, st, err)
    assert st["why"].startswith("cannot read the copy queues from the broker at 127.0.0.1 (")
    assert "NOT_ALLOWED" in st["why"] and st["why"].endswith("check the vhost/user with rabbitmq/rabbitmq_init.sh")
    assert st["outstanding"] == 0  # what the ledger says stays shown: only the queues are not known
    assert plain.returncode == 3, explain(plain)
    lines = plain.stdout.splitlines()
    assert lines[0].startswith(f"copy unknown  run {st['run_id']}"), plain.stdout
    assert "queues    unknown (the broker could not be read); outstanding tasks 0" in lines, plain.stdout
    assert f"why       {st['why']}" in lines, plain.stdout
    rc, st, _ = _status(site, "copy")
    assert (rc, st["state"]) == (0, "complete") and "why" not in st, st


def test_a_queue_that_cannot_be_read_is_not_0_messages(site: Deployment) -> None:
    """The dead-letter queue of a complete pass held exclusively by another connection: the passive declare
    gets RESOURCE_LOCKED. Before: read as 0 dead letters, the run "complete" (exit 0). A queue never
    declared (the dirtime pass's, before any dirtime pass) is NOT_FOUND: 0, and its pass "none"."""
    with kombu.Connection(_broker_url(site)) as conn:
        conn.channel().queue_declare("cmover.copy.dead", exclusive=True)
        rc, st, _ = _status(site, "copy")
    assert (rc, st["state"]) == (3, "unknown"), st
    assert "cannot read cmover.copy.dead from the broker" in st["why"] and "RESOURCE_LOCKED" in st["why"], st
    rc, st, _ = _status(site, "copy")
    assert (rc, st["state"], st["dead_letters"]) == (0, "complete", 0), st


def test_wait_reads_again_while_the_broker_refuses_it_and_ends_complete(site: Deployment) -> None:
    """A dirtime pass that no worker takes yet; its `--wait` goes on through 3 s of revoked permissions
    (before: exit 2 at the first reading), and once a dirtime worker runs, it ends complete (exit 0)."""
    waiter = subprocess.Popen([str(CMOVER), "start", "dirtime", "--wait", "--json"], cwd=REPO, env=site.env(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while (st := _status(site, "dirtime")[1])["state"] != "running":
            assert waiter.poll() is None and time.monotonic() < deadline, (st, waiter.communicate())
            time.sleep(0.2)
        _revoke(site)
        try:
            time.sleep(3)  # `wait` reads every second: three readings at least, each refused
            assert waiter.poll() is None, f"--wait ended while the broker refused it: {waiter.communicate()}"
        finally:
            _grant(site)
        site.start_worker("wd", DIRTIME_QS).wait_ready()
        out, err = waiter.communicate(timeout=60)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
    assert waiter.returncode == 0, (out, err)
    assert json.loads(out)["state"] == "complete", out


def test_wait_gives_unknown_back_when_the_broker_stays_unreadable(site: Deployment) -> None:
    """`wait` with a patience of 1 s (the command's is BROKER_PATIENCE) on a delete run no worker takes."""
    r = site.cmover("start", "delete", timeout=60)
    assert r.returncode == 0, explain(r)
    run_id = r.stdout.split()[3]
    code = ("import json, time; from cmover import app; from cmover.core.settings import load_settings; "
            "from cmover.ops.status import wait; s = load_settings(); app.install_settings(s); t = time.monotonic(); "
            f"st = wait(s, 'delete', {run_id!r}, poll=0.2, patience=1.0); "
            "print(json.dumps({**st.as_dict(), 'took': time.monotonic() - t, 'broker': st.broker_unreadable}))")
    _revoke(site)
    try:
        got = subprocess.run([str(BIN / "python"), "-c", code], cwd=REPO, env=site.env(), capture_output=True,
                             text=True, timeout=60)
    finally:
        _grant(site)
    assert got.returncode == 0, got.stderr
    st = json.loads(got.stdout)
    assert (st["state"], st["run_id"], st["broker"]) == ("unknown", run_id, True), st
    assert 1.0 <= st["took"] < 10, st
    assert "cannot read the delete queues from the broker" in st["why"], st


# -- a task the ledger could not count ----------------------------------------------------------------------


def test_a_task_published_uncounted_makes_the_run_unknown_for_good(
        site: Deployment, memcached: tuple[int, subprocess.Popen[bytes]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The directory task of a pass root with two subdirectories runs in this process (a worker's context on
    the site's memcached, children recorded instead of published). memcached is frozen after the first
    child is published: the second child's ``enqueue`` times out, so does the mark; it is published
    all the same. memcached answers again before the parent is done. After the first child has run, the
    ledger's count is 0 while the second still has to run: `cmover status` said "complete" there."""
    from pymemcache.client.base import PooledClient
    from support.worker import InProcessWorker

    from cmover.core.passes import PassKind, PassSpec
    from cmover.state.ledger import MemcacheLedger
    from cmover.tasks_copy import copy_dir

    port, proc = memcached
    src, dst = tmp_path / "src", tmp_path / "dst"
    for d in ("a", "b"):
        (src / d).mkdir(parents=True)  # empty: a child's task publishes nothing itself
    dst.mkdir()
    run_id = f"copy-untrusted-{uuid.uuid4().hex[:8]}"
    spec = PassSpec(run_id=run_id, kind=PassKind.COPY, src_root=os.fsencode(src), dst_root=os.fsencode(dst),
                    inline_entries=0, inline_seconds=3600.0)
    ledger = MemcacheLedger(lambda: PooledClient(("127.0.0.1", port), connect_timeout=1, timeout=0.5))
    worker = InProcessWorker(None, None)
    worker.ctx.ledger = ledger
    worker.install(monkeypatch)
    from cmover.worker import taskbase

    taskbase.seed(worker.send, spec, worker.ctx.ledger)
    [(_, root_args, root)] = worker.sent
    sent: list[tuple[str, list[Any], str]] = []

    class Publisher:
        """The worker's publisher (taskbase.publisher): it keeps what it is given and freezes memcached after the
        first child."""

        def send(self, messages: list[tuple[str, list[Any], str]]) -> None:
            for name, args, task_id in messages:
                sent.append((name, list(args), task_id))
                if len(sent) == 1:
                    os.kill(proc.pid, signal.SIGSTOP)  # the next child's enqueue finds memcached frozen
                elif len(sent) == 2:
                    os.kill(proc.pid, signal.SIGCONT)

        def settle(self) -> None:
            pass

    monkeypatch.setattr(taskbase, "publisher", Publisher)

    def run(task_id: str, *args: Any) -> None:
        copy_dir.push_request(id=task_id, args=list(args), kwargs={}, delivery_info={}, retries=0,
                              hostname="in-process@test", is_eager=False)
        try:
            copy_dir.run(*args)
        finally:
            copy_dir.pop_request()

    try:
        run(root, *root_args)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    # The children run below in this process too, with the same worker context: uninstalled at the end.
    assert [name for name, _, _ in sent] == ["cmover.copy.dir", "cmover.copy.dir"], sent  # both published
    children = {str(args[1]): (tid, args) for _, args, tid in sent}
    assert ledger.outstanding(run_id) == 1  # the first child only: the second was never counted

    def state() -> tuple[int, dict[str, Any]]:
        rc, st, _ = _status(site, "copy", "--run", run_id)
        return rc, st

    rc, st = state()
    assert (rc, st["state"], st["outstanding"]) == (3, "unknown", None), st
    # One task went uncounted; the mark may say 2: its first incr timed out on the frozen memcached, which
    # applied it on waking, and the mark was written again (memcached's incr cannot be made idempotent).
    assert re.match(r"[12] task\(s\) were published while the completion ledger could not count them", st["why"]), st

    first, second = sorted(children)
    tid, args = children[first]
    run(tid, *args)
    assert ledger.outstanding(run_id) == 0  # the second child has not run: this count proves nothing
    rc, st = state()
    assert (rc, st["state"]) == (3, "unknown"), st  # before: "complete", exit 0

    tid, args = children[second]
    run(tid, *args)
    rc, st = state()
    assert (rc, st["state"]) == (3, "unknown"), st  # the mark outlives the run: its count was never whole
    assert (dst / "a").is_dir() and (dst / "b").is_dir()
    worker.uninstall()


# -- a run that looks stalled ------------------------------------------------------------------------------------

def test_a_counted_task_that_never_reached_a_queue_makes_the_run_look_stalled(
        site: Deployment, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        request: pytest.FixtureRequest) -> None:
    """A task the ledger counts whose message never reached the broker (its worker killed between the two):
    the run stays "running" -- the ledger cannot tell it from a task still running -- and once neither a queue
    holds a message nor a worker has reported for STALLED_AFTER, `status` says that it looks stalled and what
    to do, and `--wait` says it once and waits on: the run completes when the task is done after all."""
    import threading

    from cmover.cli.passes import wait_and_report
    from cmover.core import site as site_settings
    from cmover.core.passes import PassKind, PassSpec
    from cmover.core.settings import load_settings
    from cmover.ops import broker, runs
    from cmover.ops import status as status_mod

    settings = load_settings(str(site.config))
    monkeypatch.setattr(site_settings, "_settings", settings)  # as the command installs those of its --config
    request.addfinalizer(broker.close)  # this process's connection to the site's broker
    run_id = f"copy-stalled-{uuid.uuid4().hex[:8]}"
    spec = PassSpec(run_id=run_id, kind=PassKind.COPY, src_root=os.fsencode(site.src),
                    dst_root=os.fsencode(site.dst))
    ledger = runs.ledger(settings)
    ledger.open_run(run_id)
    ledger.enqueue(run_id, "lost-task")
    runs.record_start(settings, spec)
    monkeypatch.setattr(status_mod, "STALLED_AFTER", 1.0)
    st = status_mod.status(settings, "copy", run_id)
    assert (st.state, st.outstanding, st.note, st.as_dict()["stalled_s"]) == ("running", 1, None, None)  # just started
    time.sleep(1.2)
    st = status_mod.status(settings, "copy", run_id)
    assert (st.state, st.outstanding) == ("running", 1), st
    assert st.note is not None and st.note.startswith("the pass looks stalled: 1 task(s) outstanding, none queued"), st
    assert "`cmover start copy`" in st.as_dict()["why"] and st.as_dict()["stalled_s"] >= 1, st

    done: list[tuple[int, dict[str, int]]] = []
    waiting = threading.Thread(target=lambda: done.append(wait_and_report(settings, "copy", run_id, True)))
    waiting.start()
    try:
        time.sleep(3)  # several readings: the warning is said once
        assert waiting.is_alive()  # a stalled run is not given up on
    finally:
        ledger.begin(run_id, "lost-task")
        ledger.done(run_id, "lost-task")  # its message found after all (no delivery finished: no report awaited)
        waiting.join(60)
    assert not waiting.is_alive() and done and done[0][0] == 0, done
    err = capsys.readouterr().err
    assert err.count("cmover: the pass looks stalled: 1 task(s) outstanding") == 1, err
