"""The shipped dashboards and alert rules, without a pass: generated files current, rules checked by promtool.

- dashboards/cmover-{graphite,prometheus,graphite-web}.json are what ``dashboards/generate.py`` writes from
  its one panel list (``--check``, the command line a developer runs, fails on a file edited by hand);
- dashboards/cmover-alerts.yml passes ``promtool check rules`` and its unit tests
  (dashboards/cmover-alerts.test.yml, ``promtool test rules``), which show every rule both firing and quiet;
- the README points at the rule file and holds no rule of its own.

What the readers make of all this after a real pass is tests/integration/test_monitoring.py. promtool comes
from the Debian package prometheus (``scripts/services.sh ensure_prometheus``); without it the tests fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS = REPO / "dashboards"
GENERATE = DASHBOARDS / "generate.py"

sys.path.insert(0, str(DASHBOARDS))
import generate  # noqa: E402


def _run(*cmd: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, stdin=subprocess.DEVNULL,
                          timeout=300)


@pytest.fixture(scope="module")
def promtool() -> str:
    r = _run("bash", REPO / "scripts" / "services.sh", "ensure_prometheus")
    if r.returncode != 0:
        pytest.fail(f"scripts/services.sh ensure_prometheus failed: promtool is required\n{r.stdout}{r.stderr}")
    found = shutil.which("promtool")
    assert found, "ensure_prometheus succeeded but promtool is not on PATH"
    return found


# -- generated dashboards ------------------------------------------------------------------------------------


def test_the_committed_dashboards_are_what_the_panel_list_generates(tmp_path: Path) -> None:
    r = _run(sys.executable, GENERATE, "--check")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    # The check can fail: a copy with one title edited by hand is named, and regenerating repairs it.
    for name in generate.outputs():
        shutil.copy(DASHBOARDS / name, tmp_path / name)
    edited = tmp_path / "cmover-prometheus.json"
    edited.write_text(edited.read_text().replace("Queue depths", "Queue lengths"))
    r = _run(sys.executable, GENERATE, "--check", "--dir", tmp_path)
    assert r.returncode == 1
    assert r.stderr == ("generate.py: cmover-prometheus.json differ from the panel list; run python "
                        "dashboards/generate.py\n")
    assert _run(sys.executable, GENERATE, "--dir", tmp_path).returncode == 0
    assert _run(sys.executable, GENERATE, "--check", "--dir", tmp_path).returncode == 0


def test_every_dashboard_shows_every_panel_of_the_list() -> None:
    titles = [p.title for p in generate.PANELS]
    for reader in ("graphite", "prometheus"):
        doc = json.loads((DASHBOARDS / f"cmover-{reader}.json").read_text())
        assert [p["title"] for p in doc["panels"]] == titles
        assert [len(p["targets"]) for p in doc["panels"]] == [len(p.queries) for p in generate.PANELS]
        assert {t["datasource"]["type"] for p in doc["panels"] for t in p["targets"]} == {reader}
    web = json.loads((DASHBOARDS / "cmover-graphite-web.json").read_text())
    assert [g[1]["title"] for g in web["graphs"]] == titles
    # The template key of the graphite-web dashboard is the prefix; it must appear only as the prefix.
    for graph in web["graphs"]:
        for target in graph[1]["target"]:
            assert target.count(generate.DEFAULT_PREFIX) == 1 and f"{generate.DEFAULT_PREFIX}." in target, target


# -- alert rules ---------------------------------------------------------------------------------------------


def test_the_alert_rules_pass_promtool_check(promtool: str) -> None:
    r = _run(promtool, "check", "rules", "cmover-alerts.yml", cwd=DASHBOARDS)
    assert r.returncode == 0, r.stdout + r.stderr
    names = [rule["alert"] for g in yaml.safe_load((DASHBOARDS / "cmover-alerts.yml").read_text())["groups"]
             for rule in g["rules"]]
    assert names == ["CmoverUnreadable", "CmoverNoProgress", "CmoverFailuresRising", "CmoverDeadLettered"]
    assert f"SUCCESS: {len(names)} rules found" in r.stdout, r.stdout


def test_the_alert_rules_unit_tests_pass_and_show_each_rule_firing_and_quiet(promtool: str) -> None:
    r = _run(promtool, "test", "rules", "cmover-alerts.test.yml", cwd=DASHBOARDS)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout, r.stdout
    rules = {rule["alert"] for g in yaml.safe_load((DASHBOARDS / "cmover-alerts.yml").read_text())["groups"]
             for rule in g["rules"]}
    cases = [c for t in yaml.safe_load((DASHBOARDS / "cmover-alerts.test.yml").read_text())["tests"]
             for c in t["alert_rule_test"]]
    firing = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert firing == quiet == rules


def test_the_unit_tests_catch_a_rule_that_fires_too_early(promtool: str, tmp_path: Path) -> None:
    """The unit tests can fail: CmoverUnreadable with 4 minutes instead of 5 fires before its time."""
    shutil.copy(DASHBOARDS / "cmover-alerts.test.yml", tmp_path)
    rules = (DASHBOARDS / "cmover-alerts.yml").read_text()
    assert rules.count("for: 5m") == 1
    (tmp_path / "cmover-alerts.yml").write_text(rules.replace("for: 5m", "for: 4m"))
    r = _run(promtool, "test", "rules", "cmover-alerts.test.yml", cwd=tmp_path)
    assert r.returncode == 1 and "CmoverUnreadable" in r.stdout + r.stderr, r.stdout + r.stderr


def test_the_readme_points_at_the_rule_file_and_holds_no_rule() -> None:
    readme = (REPO / "README.md").read_text()
    assert "dashboards/cmover-alerts.yml" in readme and "dashboards/cmover-alerts.test.yml" in readme
    assert not re.search(r"^\s*-\s*alert:", readme, re.M), "an alerting rule in README.md: put it in the rule file"
    for name in ("CmoverUnreadable", "CmoverNoProgress", "CmoverFailuresRising", "CmoverDeadLettered"):
        assert f"`{name}`" in readme, name


def test_without_a_working_promtool_the_tests_fail_not_skip(tmp_path: Path) -> None:
    """A promtool that cannot run (here one that exits 1, first on PATH) fails the rule tests; none is skipped."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "promtool").write_text("#!/bin/sh\necho 'promtool: broken' >&2\nexit 1\n")
    (fake / "promtool").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                        "promtool_check"], capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"\b1 error\b", r.stdout) and "skipped" not in r.stdout, r.stdout
    assert "ensure_prometheus failed: promtool is required" in r.stdout, r.stdout
