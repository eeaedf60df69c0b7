"""The commands an operator types around a distributed pass, as the README writes them, on a real site.

* Listings whose output is closed early -- ``cmover deleted | head -3`` and a pipe its reader closed --
  end at once with exit 141 (128 + SIGPIPE) and no traceback: ``cmover deleted``, ``cmover errors``,
  ``cmover status`` (text and JSON). Before, they ended with a BrokenPipeError traceback.
* Celery's classic commands with both spellings of the app the README documents, in Celery 5's order
  (``celery -A APP inspect|control ...``): ``-A cmover.app`` and ``-A cmover_control``. Before,
  ``-A cmover_control`` failed with "Module 'cmover_control' has no attribute 'celery'".
* ``python cmover_control.py ...`` and ``python send_graphite.py`` with the machine's own Python 3 (which
  lacks cmover's dependencies): they run under the project's environment. Before: ModuleNotFoundError.

One site serves them all: a worker (DAC capabilities dropped, so the mode-000 files of another user
are failures) that ran a copy pass (hundreds of failures: a long ``cmover errors``) and a delete pass
(hundreds of deleted entries: a long ``cmover deleted``). Both listings are longer than a pipe holds,
so a reader that stops early always meets a writer that has more to say.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.cli import system_python
from support.closedout import EXIT_SECONDS, Outcome, close_output, head_through_bash
from support.deploy import CELERY, CMOVER, DIRS_Q, FILES_Q, REPO, Deployment, DeploymentSet, Worker, explain, run
from support.tree import random_tree

pytestmark = pytest.mark.integration

N_LOCKED = 600  # failures of the copy pass: ~165 KB of `cmover errors`
N_EXTRA = 1000  # entries only on the target, deleted by the delete pass: ~180 KB of `cmover deleted`
#: Both listings are longer than this: a pipe's capacity and a reader's first read, twice over.
LONG_BYTES = 2 * (64 + 8) * 1024
EXIT_OUTPUT_GONE = 141


@dataclass
class Site:
    dep: Deployment
    worker: Worker
    node: str
    copy_run: str
    delete_run: str


@pytest.fixture(scope="module")
def site(module_deployments: DeploymentSet, tmp_path_factory: pytest.TempPathFactory) -> Site:
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop root's DAC capabilities"
    root = tmp_path_factory.mktemp("operator")
    src, dst = root / "src", root / "dst"
    random_tree(src, seed=21, n_files=100, n_dirs=10, weird_names=False, owners=False)
    (src / "locked").mkdir()
    for i in range(N_LOCKED):
        f = src / "locked" / f"unreadable-{i:04d}-{'y' * 160}"
        f.write_bytes(b"x")
        os.chown(f, 1000, 1000)
        f.chmod(0)
    dst.mkdir()
    for i in range(N_EXTRA):
        (dst / f"only-on-the-target-{i:04d}-{'x' * 150}").write_bytes(b"")
    dep = module_deployments.new("operator", src, dst, INLINE_ENTRIES=50, BATCH=100)
    dep.init_broker()
    worker = dep.start_worker("w1", (DIRS_Q, FILES_Q, "cmover.delete.dirs", "cmover.delete.files"), concurrency=2,
                              prefix=(setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"))
    worker.wait_ready()
    copy = dep.cmover("start", "copy", "--wait", "--json", timeout=300)
    assert copy.returncode == 1, explain(copy)
    copied = json.loads(copy.stdout.strip().splitlines()[-1])
    assert copied["failure_count"] == N_LOCKED, copied["totals"]
    delete = dep.cmover("start", "delete", "--wait", "--json", timeout=300)
    assert delete.returncode == 0, explain(delete)
    deleted = json.loads(delete.stdout.strip().splitlines()[-1])
    assert deleted["deleted_count"] == N_EXTRA, deleted["totals"]
    return Site(dep, worker, f"w1@{socket.gethostname()}", copied["run_id"], deleted["run_id"])


# -- listings with their output closed early ----------------------------------------------------------------

LISTINGS = {"deleted": ["deleted"], "errors": ["errors", "copy"], "status": ["status"],
            "status-json": ["status", "--json"]}
LONG = ("deleted", "errors")  # longer than a pipe holds


def _quiet_end(o: Outcome, *codes: int) -> None:
    assert o.returncode in codes, o.explain()
    assert "Traceback" not in o.stderr and "Exception ignored" not in o.stderr, o.explain()
    assert o.seconds < EXIT_SECONDS, o.explain()
    assert o.leftovers == [], o.explain()


@pytest.mark.parametrize("name", LISTINGS)
def test_listing_into_a_pipe_closed_early(site: Site, name: str) -> None:
    args = LISTINGS[name]
    env = site.dep.env()
    # Closed before it wrote anything: its first write fails.
    o = close_output([str(CMOVER), *args], env=env, cwd=REPO)
    _quiet_end(o, EXIT_OUTPUT_GONE)
    assert o.stderr == "", o.explain()
    if name in LONG:
        # Closed after the first bytes, while it blocks on a full pipe with more to write.
        o = close_output([str(CMOVER), *args], env=env, cwd=REPO, read=64)
        _quiet_end(o, EXIT_OUTPUT_GONE)
        assert len(o.got) == 64, o.explain()


@pytest.mark.parametrize("name", LISTINGS)
def test_listing_into_head(site: Site, name: str) -> None:
    """``cmover deleted | head -1`` (the issue had ``| head -3``): the first line, then a quiet end."""
    line = " ".join([str(CMOVER), *LISTINGS[name]])
    o = head_through_bash(line, env=site.dep.env(), cwd=REPO)
    # A short listing may be written whole before head exits: then nothing failed and it exits 0.
    _quiet_end(o, *((EXIT_OUTPUT_GONE,) if name in LONG else (0, EXIT_OUTPUT_GONE)))
    assert o.got.count(b"\n") == 1, o.explain()
    if name == "deleted":
        assert o.got.startswith(b"only-on-the-target-"), o.explain()
    if name == "errors":
        assert o.got.startswith(b"locked/unreadable-"), o.explain()


# -- Celery's classic commands -----------------------------------------------------------------------------


def _celery(site: Site, app: str, *args: str) -> object:
    """``celery -A APP ARGS --json`` from the cmover directory, with the site's config; the parsed reply."""
    r = run([CELERY, "-A", app, *args, "--timeout", "5", "-d", site.node, "--json"], env=site.dep.env(),
            cwd=REPO, timeout=60)
    assert r.returncode == 0, explain(r)
    return json.loads(r.stdout.strip().splitlines()[-1])


def _pool_size(site: Site, app: str) -> int:
    stats = _celery(site, app, "inspect", "stats")
    assert isinstance(stats, dict)
    return len(stats[site.node]["pool"]["processes"])


def _until_pool_size(site: Site, app: str, want: int) -> None:
    """The worker resizes its pool after it answered: poll its stats until the size is ``want``."""
    deadline = time.monotonic() + 20
    while (got := _pool_size(site, app)) != want:
        assert time.monotonic() < deadline, f"pool of {site.node} has {got} processes, not {want}, after 20 s"
        time.sleep(0.2)


def test_celery_commands_with_either_app(site: Site) -> None:
    """``celery -A APP inspect ping|active|stats`` and ``celery -A APP control pool_grow``, APP being
    ``cmover.app`` or ``cmover_control``; each spelling's pool_grow is checked through the other's stats."""
    for app in ("cmover.app", "cmover_control"):
        assert _celery(site, app, "inspect", "ping") == {site.node: {"ok": "pong"}}, app
        assert _celery(site, app, "inspect", "active") == {site.node: []}, app
    size = 2  # the worker's -c
    for app, other in (("cmover.app", "cmover_control"), ("cmover_control", "cmover.app")):
        grown = _celery(site, app, "control", "pool_grow", "1")
        assert grown == [{site.node: {"ok": "pool will grow"}}], (app, grown)
        size += 1
        _until_pool_size(site, other, size)


# -- the scripts with the machine's Python 3 ------------------------------------------------------------


def test_cmover_control_with_the_system_python(site: Site) -> None:
    python = system_python()
    r = run([python, "cmover_control.py", "status", "copy", "--json"], env=site.dep.env(), cwd=REPO, timeout=60)
    assert r.returncode == 0, explain(r)
    st = json.loads(r.stdout)
    assert st["run_id"] == site.copy_run and st["state"] == "complete", st
    r = run([python, "cmover_control.py", "deleted"], env=site.dep.env(), cwd=REPO, timeout=60)
    assert r.returncode == 0, explain(r)
    assert len(r.stdout.splitlines()) == N_EXTRA and len(r.stdout) > LONG_BYTES
    assert r.stderr == f"{N_EXTRA:,} entries in the deletion list of {site.delete_run}\n", explain(r)
    r = run([python, "cmover_control.py", "errors", "copy"], env=site.dep.env(), cwd=REPO, timeout=60)
    assert r.returncode == 0, explain(r)
    assert len(r.stdout.splitlines()) == N_LOCKED and len(r.stdout) > LONG_BYTES
    assert r.stderr == f"{N_LOCKED:,} failure(s) in {site.copy_run}\n", explain(r)


def test_send_graphite_with_the_system_python(site: Site, tmp_path: Path) -> None:
    r = run(["bash", "-c", "source scripts/services.sh && ensure_carbon && carbon_info"], timeout=600)
    assert r.returncode == 0, f"carbon-cache is required\n{explain(r)}"
    host, port, _ = r.stdout.split()
    cfg = tmp_path / "config.py"
    cfg.write_text(site.dep.config.read_text() + f"GRAPHITE_HOST = {host!r}\nGRAPHITE_PORT = {int(port)}\n"
                   "GRAPHITE_PREFIX = 'cmover_operator_test'\n")
    r = run([system_python(), "send_graphite.py", "-v", "--config", str(cfg)], env=site.dep.env(), cwd=REPO,
            timeout=60)
    assert r.returncode == 0, explain(r)
    assert r.stdout.startswith("send_graphite: sent ") and f"to {host}:{port} as cmover_operator_test.* (" in r.stdout
    assert f"copy run {site.copy_run}" in r.stdout and f"delete run {site.delete_run}" in r.stdout, r.stdout
