"""The ``cmover`` command and ``cmover_control.py`` run as subprocesses: exit codes, messages, no side effects.

Every failing case must exit 2 with one line on stderr starting with ``cmover:`` and leave the file
system exactly as it was (DST not created, nothing new anywhere under tmp_path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import REPO, assert_fatal, run
from support.snap import snapshot, unchanged


@pytest.fixture
def site(tmp_path):
    """tmp_path/work (the cwd, empty), tmp_path/site/config.py (no broker), tmp_path/src with a small tree."""
    work = tmp_path / "work"
    work.mkdir()
    site = tmp_path / "site"
    site.mkdir()
    cfg = site / "config.py"
    cfg.write_text("BATCH = 3\nINLINE_ENTRIES = 2\n")
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    for rel, data in (("top", b"top"), ("a/one", b"1" * 100), ("a/b/two", b"22"), ("a/b/three", b"")):
        (src / rel).write_bytes(data)
    os.symlink("a/one", src / "link")
    (src / os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1 name")
    return tmp_path, work, cfg, src


# -- successful copies ---------------------------------------------------------------------------------

def test_copy_explicit_config(site):
    tmp, work, cfg, src = site
    dst = tmp / "dst"
    res = run(["copy", str(src), str(dst)], work, config=cfg)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("cmover copy: complete in")
    assert "6 scanned, 6 copied" in res.stdout and "0 failed" in res.stdout
    assert (dst / "a/b/two").read_bytes() == b"22" and os.readlink(dst / "link") == "a/one"
    assert (dst / os.fsdecode(b"caf\xe9")).read_bytes() == b"latin-1 name"
    assert os.listdir(work) == []


def test_copy_config_from_cwd_and_json(site):
    tmp, work, cfg, src = site
    (work / "config.py").write_text(cfg.read_text())
    dst = tmp / "dst"
    res = run(["copy", "--json", "../src", "../dst"], work)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["pass"] == "copy" and out["state"] == "complete" and out["failure_count"] == 0
    assert out["totals"]["files_copied"] == 6
    again = json.loads(run(["copy", "--json", str(src), str(dst)], work).stdout)
    assert again["totals"]["files_skipped"] == 6 and again["totals"].get("files_copied", 0) == 0


def test_copy_with_exclude_file(site):
    tmp, work, cfg, src = site
    ex = tmp / "ex"
    ex.write_text("a/b\n")
    dst = tmp / "dst"
    res = run(["copy", "--exclude-file", str(ex), str(src), str(dst)], work, config=cfg)
    assert res.returncode == 0, res.stderr
    assert (dst / "a/one").exists() and not (dst / "a/b").exists()
    assert "1 excluded" in res.stdout


def test_copy_chunked_huge_file(site):
    tmp, work, cfg, src = site
    data = os.urandom((5 << 20) + 7)
    (src / "a" / "huge").write_bytes(data)
    os.utime(src / "a" / "huge", ns=(1_500_000_000_000_000_001, 1_600_000_000_000_000_003))
    dst = tmp / "dst"
    res = run(["copy", "--json", "--chunk-threshold", "2M", "--chunk-size", "1MiB", str(src), str(dst)], work,
              config=cfg)
    assert res.returncode == 0, res.stderr
    t = json.loads(res.stdout)["totals"]
    assert t["files_chunked"] == 1 and t["chunks_copied"] == 6 and t["files_copied"] == 7
    assert (dst / "a" / "huge").read_bytes() == data
    assert os.stat(dst / "a" / "huge").st_mtime_ns == 1_600_000_000_000_000_003
    assert [n for n in os.listdir(dst / "a") if n.endswith(".part")] == []


# -- fatal input: exit 2, one line, nothing written ----------------------------------------------------

def _fatal_case(site, args_fn, *words, config="default", **env):
    tmp, work, cfg, src = site
    before = snapshot(tmp)
    res = run(args_fn(tmp, src), work, config=cfg if config == "default" else config, **env)
    assert_fatal(res, *words)
    assert unchanged(before, snapshot(tmp)) == []


def test_missing_src(site):
    _fatal_case(site, lambda t, s: ["copy", str(t / "nope"), str(t / "dst")], "does not exist")


def test_src_equals_dst(site):
    _fatal_case(site, lambda t, s: ["copy", str(s), str(s) + "/"], "same")


def test_dst_inside_src(site):
    _fatal_case(site, lambda t, s: ["copy", str(s), str(s / "a" / "copy")], "inside the source")


def test_src_inside_dst(site):
    _fatal_case(site, lambda t, s: ["copy", str(s / "a"), str(s)], "inside the target")


def test_src_through_symlink_equals_dst(site):
    tmp, *_ = site
    os.symlink("src", tmp / "alias")
    _fatal_case(site, lambda t, s: ["copy", str(t / "alias"), str(s)], "same")


def test_src_is_a_file(site):
    _fatal_case(site, lambda t, s: ["copy", str(s / "top"), str(t / "dst")], "not a directory")


def test_dst_parent_missing(site):
    _fatal_case(site, lambda t, s: ["copy", str(s), str(t / "no" / "dst")], "parent")


def test_config_with_unknown_setting(site):
    tmp, work, cfg, src = site
    cfg.write_text("BATCH = 3\nBACTH = 4\n")
    _fatal_case(site, lambda t, s: ["copy", str(s), str(t / "dst")], "BACTH")


def test_config_env_missing_file(site):
    tmp, *_ = site
    _fatal_case(site, lambda t, s: ["copy", str(s), str(t / "dst")], "CMOVER_CONFIG",
                config=tmp / "missing.py")


def test_explicit_config_option_missing(site):
    _fatal_case(site, lambda t, s: ["--config", str(t / "missing.py"), "copy", str(s), str(t / "dst")],
                "not found")


@pytest.mark.parametrize("args", [
    ["copy", "--bogus", "a", "b"], ["copy", "onlyone"], ["frobnicate"], [], ["copy", "--batch", "x", "a", "b"],
])
def test_bad_options(site, args):
    _fatal_case(site, lambda t, s: args)


def test_batch_zero(site):
    _fatal_case(site, lambda t, s: ["copy", "--batch", "0", str(s), str(t / "dst")], "batch")


@pytest.mark.parametrize("args, word", [
    (["--chunk-size", "1000"], "chunk-size"),
    (["--chunk-size", "lots"], "not a size"),
    (["--chunk-threshold", "1M", "--chunk-size", "4M"], "below"),
])
def test_bad_chunk_options(site, args, word):
    _fatal_case(site, lambda t, s: ["copy", *args, str(s), str(t / "dst")], word)


def test_negative_jobs(site):
    _fatal_case(site, lambda t, s: ["copy", "-j", "-1", str(s), str(t / "dst")], "jobs")


def test_missing_exclude_file(site):
    _fatal_case(site, lambda t, s: ["copy", "--exclude-file", str(t / "nope"), str(s), str(t / "dst")],
                "exclusions file")


def test_exclude_outside_source(site):
    tmp, *_ = site
    (tmp / "ex").write_text("/etc\n")
    _fatal_case(site, lambda t, s: ["copy", "--exclude-file", str(t / "ex"), str(s), str(t / "dst")], "ex:1:")


def test_control_script_without_args(site):
    tmp, work, cfg, src = site
    before = snapshot(tmp)
    res = run([], work, config=cfg, cmd=[sys.executable, str(REPO / "cmover_control.py")])
    assert res.returncode == 2 and "usage" in res.stderr
    assert unchanged(before, snapshot(tmp)) == []


# -- the size filter (MIN_SIZE / MAX_SIZE, --min-size / --max-size) ------------------------------------------

def _sized_site(tmp: Path) -> tuple[Path, Path]:
    """A source with files around the window [10 B, 1 KiB] and a target holding older versions and extras."""
    src, dst = tmp / "sized-src", tmp / "sized-dst"
    (src / "d").mkdir(parents=True)
    for rel, size in (("tiny", 5), ("empty", 0), ("mid", 100), ("d/edge-low", 10), ("d/edge-high", 1024),
                      ("big", 2000), ("retyped", 3000), (os.fsdecode(b"gro\xdf"), 5000)):
        (src / rel).write_bytes(b"s" * size)
    os.link(src / "big", src / "d" / "big-link")  # a second name of a left-out file: left out too
    os.symlink("big", src / "to-big")  # a symlink is never filtered, whatever it points to
    dst.mkdir()
    (dst / "big").write_bytes(b"old")  # an older version of a file now over the limit: kept as it is
    (dst / "tiny").write_bytes(b"old tiny version")  # under the limit on the source: kept as it is
    (dst / "retyped").mkdir()  # a directory where the source now has a file over the limit
    (dst / "retyped" / "inner").write_bytes(b"i")
    (dst / "gone-big").write_bytes(b"g" * 5000)  # big, and gone from the source: deleted
    (dst / "gone-small").write_bytes(b"g")  # small, and gone from the source: deleted
    return src, dst


def test_size_filter_leaves_files_out_and_the_delete_pass_keeps_them(site):
    tmp, work, cfg, _ = site
    src, dst = _sized_site(tmp)
    window = ["--min-size", "10", "--max-size", "1K"]
    res = run(["copy", "--json", *window, str(src), str(dst)], work, config=cfg)
    assert res.returncode == 0, res.stderr
    t = json.loads(res.stdout)["totals"]
    # tiny, empty, big, big-link, retyped and the 5000-byte file with a Latin-1 name
    assert (t["files_size_filtered"], t["files_copied"], t.get("files_filtered", 0)) == (6, 4, 0), t
    assert sorted(os.listdir(dst / "d")) == ["edge-high", "edge-low"]  # both bounds are inclusive
    assert (dst / "mid").read_bytes() == b"s" * 100 and os.readlink(dst / "to-big") == "big"
    assert not (dst / "empty").exists() and not (dst / os.fsdecode(b"gro\xdf")).exists()
    assert (dst / "big").read_bytes() == b"old" and (dst / "tiny").read_bytes() == b"old tiny version"

    text = run(["copy", *window, str(src), str(dst)], work, config=cfg)
    assert text.returncode == 0, text.stderr
    assert "  left out  0 by age filters, 6 by size, 0 excluded; 0 changed during copy" in text.stdout, text.stdout

    # The delete pass, with the filter or without: only what is gone from the source goes.
    for args in (window, []):
        res = run(["delete", "--json", *args, str(src), str(dst)], work, config=cfg)
        assert res.returncode == 0, res.stderr
        deleted = json.loads(res.stdout)["totals"].get("entries_deleted", 0)
        assert deleted == (2 if args else 0), res.stdout
    assert (dst / "big").read_bytes() == b"old" and (dst / "tiny").read_bytes() == b"old tiny version"
    assert (dst / "retyped" / "inner").read_bytes() == b"i"  # neither pass touches a name left out
    assert not (dst / "gone-big").exists() and not (dst / "gone-small").exists()

    # Without the filter the same target becomes the source.
    res = run(["sync", "--max-size", "0", str(src), str(dst)], work, config=cfg)
    assert res.returncode == 0, res.stderr
    assert (dst / "big").read_bytes() == b"s" * 2000 and (dst / "retyped").read_bytes() == b"s" * 3000
    assert os.stat(dst / "big").st_ino == os.stat(dst / "d" / "big-link").st_ino


def test_size_filter_from_config_and_overridden_on_the_command_line(site):
    tmp, work, cfg, src = site  # a/one has 100 bytes, top 3, a/b/two 2, a/b/three 0, caf\xe9 12
    cfg.write_text(cfg.read_text() + 'MAX_SIZE = "64"\nMIN_SIZE = 1\n')
    res = run(["copy", "--json", str(src), str(tmp / "dst")], work, config=cfg)
    assert res.returncode == 0, res.stderr
    t = json.loads(res.stdout)["totals"]
    assert (t["files_size_filtered"], t["files_copied"]) == (2, 4), t  # a/one and the empty a/b/three
    res = run(["copy", "--json", "--max-size", "0", "--min-size", "0", str(src), str(tmp / "dst")], work,
              config=cfg)
    assert res.returncode == 0, res.stderr
    t = json.loads(res.stdout)["totals"]
    assert (t.get("files_size_filtered", 0), t["files_copied"]) == (0, 2), t


@pytest.mark.parametrize("args, word", [
    (["--max-size", "lots"], "not a size"),
    (["--max-size", "-1"], "not a size"),
    (["--min-size", "2K", "--max-size", "1K"], "above"),
])
def test_bad_size_options(site, args, word):
    _fatal_case(site, lambda t, s: ["copy", *args, str(s), str(t / "dst")], word)


@pytest.mark.parametrize("line, words", [
    ("MAX_SIZE = -1", ("MAX_SIZE", "0 or more")),
    ("MAX_SIZE = 'ten'", ("MAX_SIZE", "not a size")),
    ("MAX_SIZE = 1.5", ("MAX_SIZE", "int or str")),
    ("MIN_SIZE = '1M'\nMAX_SIZE = '1K'", ("MIN_SIZE", "above")),
])
def test_bad_size_settings(site, line, words):
    tmp, work, cfg, src = site
    cfg.write_text(cfg.read_text() + line + "\n")
    _fatal_case(site, lambda t, s: ["copy", str(s), str(t / "dst")], *words)


# -- start: broker configuration problems --------------------------------------------------------------

@pytest.fixture
def broker_site(site):
    tmp, work, cfg, src = site
    (tmp / "dst").mkdir()
    cfg.write_text(f"source_mount = {str(src)!r}\ntarget_mount = {str(tmp / 'dst')!r}\n")
    (cfg.parent / "rabbitmq").mkdir()
    return site


def test_start_without_broker_conf(broker_site):
    _fatal_case(broker_site, lambda t, s: ["start", "copy"], "rabbitmq.conf")


def test_start_unreachable_broker(broker_site):
    tmp, work, cfg, src = broker_site
    (cfg.parent / "rabbitmq" / "rabbitmq.conf").write_text("127.0.0.1:1\n")
    (cfg.parent / "rabbitmq" / "rabbitmq_cmover.conf").write_text("secret\n")
    _fatal_case(broker_site, lambda t, s: ["start", "copy"], "cannot reach the broker", "127.0.0.1:1")


def test_start_without_password_file(broker_site):
    tmp, work, cfg, src = broker_site
    (cfg.parent / "rabbitmq" / "rabbitmq.conf").write_text("127.0.0.1:1\n")
    _fatal_case(broker_site, lambda t, s: ["start", "copy"], "rabbitmq_init.sh", "rabbitmq_cmover.conf")


def test_control_script_start_unreachable_broker(broker_site):
    tmp, work, cfg, src = broker_site
    (cfg.parent / "rabbitmq" / "rabbitmq.conf").write_text("127.0.0.1:1\n")
    (cfg.parent / "rabbitmq" / "rabbitmq_cmover.conf").write_text("secret\n")
    before = snapshot(tmp)
    res = run(["start"], work, config=cfg, cmd=[sys.executable, str(REPO / "cmover_control.py")])
    assert_fatal(res, "cannot reach the broker")
    assert unchanged(before, snapshot(tmp)) == []


def test_start_with_config_option_uses_that_config(broker_site):
    tmp, work, cfg, src = broker_site
    (cfg.parent / "rabbitmq" / "rabbitmq.conf").write_text("127.0.0.1:1\n")
    (cfg.parent / "rabbitmq" / "rabbitmq_cmover.conf").write_text("secret\n")
    _fatal_case(broker_site, lambda t, s: ["--config", str(cfg), "start", "copy"],
                "cannot reach the broker", "127.0.0.1:1", config=None)


# -- the config file: one that is found is always validated (issue 12) ---------------------------------

def _typo_config(tmp: Path, work: Path) -> Path:
    """./config.py in the cwd (found implicitly: no --config, no $CMOVER_CONFIG) with a typo appended."""
    ex = tmp / "ex"
    ex.write_text("a/b\n")
    cfg = work / "config.py"
    cfg.write_text(f"EXCLUDE_FILE = {str(ex)!r}\nBACTH = 500\n")
    return cfg


@pytest.mark.parametrize("command", ["copy", "delete", "dirtime", "sync", "lustre-info"])
def test_typo_in_a_config_found_in_the_cwd_is_fatal(site, command):
    """Before: the ConfigError of an implicitly found config.py was swallowed and the pass ran on defaults."""
    tmp, work, cfg, src = site
    found = _typo_config(tmp, work)
    (tmp / "dst").mkdir()
    before = snapshot(tmp)
    args = [command, str(src)] if command == "lustre-info" else [command, str(src), str(tmp / "dst")]
    line = assert_fatal(run(args, work), "BACTH", str(found))
    assert "fix the spelling" in line
    assert unchanged(before, snapshot(tmp)) == []  # nothing copied, deleted or touched


def test_typo_in_a_config_with_a_broker_is_fatal_not_embedded(site):
    """Before: with a broker configured, the typo made `cmover copy` run embedded on one node (exit 0)."""
    tmp, work, cfg, src = site
    (tmp / "dst").mkdir()
    found = work / "config.py"
    found.write_text(f"source_mount = {str(src)!r}\ntarget_mount = {str(tmp / 'dst')!r}\nBACTH = 500\n")
    (work / "rabbitmq").mkdir()
    (work / "rabbitmq" / "rabbitmq.conf").write_text("127.0.0.1:1\n")
    (work / "rabbitmq" / "rabbitmq_cmover.conf").write_text("secret\n")
    before = snapshot(tmp)
    for args in (["copy", str(src), str(tmp / "dst")], ["status"], ["start", "copy"]):
        assert_fatal(run(args, work), "BACTH", str(found))
    assert unchanged(before, snapshot(tmp)) == []


def test_verbose_names_the_config_file_used_and_the_lustre_line(site):
    tmp, work, cfg, src = site
    (work / "config.py").write_text("BATCH = 5\n")
    res = run(["-v", "copy", "-q", str(src), str(tmp / "d1")], work)
    assert res.returncode == 0, res.stderr
    assert f"cmover: config {work / 'config.py'} (in the current directory)" in res.stderr.splitlines()
    assert "cmover: Lustre layouts and MDT placement not handled:" in res.stderr  # asked for with -v
    res = run(["-v", "lustre-info", str(src)], work, config=cfg)
    assert res.returncode == 0 and f"cmover: config {cfg} (named by $CMOVER_CONFIG)" in res.stderr.splitlines()
    res = run(["-v", "--config", str(cfg), "lustre-info", str(src)], work)
    assert res.returncode == 0 and f"cmover: config {cfg} (named by --config)" in res.stderr.splitlines()
    # Not asked: neither the config line nor, between two non-Lustre trees, the Lustre line (was printed
    # by every copy, -q included).
    quiet = run(["copy", "-q", str(src), str(tmp / "d3")], work)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_no_config_file_at_all_runs_embedded_on_defaults(site):
    """The package without a config.py beside it, and none in the cwd: the embedded commands use the defaults."""
    import shutil

    tmp, work, cfg, src = site
    pkg = tmp / "pkg"
    shutil.copytree(REPO / "cmover", pkg / "cmover", ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "cmover"]
    res = run(["-v", "copy", "-q", str(src), str(tmp / "dst")], work, cmd=cmd, PYTHONPATH=str(pkg))
    assert res.returncode == 0, res.stderr
    assert (f"cmover: no config file found (looked for {work / 'config.py'}, then {pkg / 'config.py'}); "
            "running on the default settings") in res.stderr.splitlines()
    assert (tmp / "dst" / "a" / "b" / "two").read_bytes() == b"22"
    # A command that needs the site's configuration still says there is none.
    assert_fatal(run(["status"], work, cmd=cmd, PYTHONPATH=str(pkg)), "no config.py found", str(work / "config.py"))


def test_help_says_which_config_file_is_read_and_what_jobs_0_means(site):
    from cmover.core.settings import PACKAGE_CONFIG

    tmp, work, cfg, src = site
    top = " ".join(run(["--help"], work).stdout.split())
    assert "--config, else by $CMOVER_CONFIG" in top and "./config.py in the current directory" in top
    assert f"else {PACKAGE_CONFIG} (beside the cmover package)" in top and "always validated" in top
    copy_help = " ".join(run(["copy", "--help"], work).stdout.split())
    assert "0 (the default): LOCAL_JOBS, or when that is 0 too, one per core (two per core when SRC or DST is on a " \
           "network filesystem" in copy_help
    res = run(["copy", "-j", "0", "-q", str(src), str(tmp / "dst")], work, config=cfg)
    assert res.returncode == 0, res.stderr


def test_default_jobs_one_per_core_two_on_a_network_filesystem(tmp_path, monkeypatch):
    """-j 0 and LOCAL_JOBS 0: one pool process per core on local disks (they keep the cores busy), two per core
    when SRC or DST is on a network filesystem, whose metadata calls leave a process waiting for a server."""
    import argparse
    import os

    from cmover.cli import passes
    from cmover.core.settings import Settings
    from cmover.lustre import detect

    assert [passes.default_jobs(c, r) for c in (1, 2, 8) for r in (False, True)] == [1, 2, 2, 4, 8, 16]
    args = argparse.Namespace(jobs=0, src=str(tmp_path), dst=str(tmp_path / "new"))
    (tmp_path / "new").mkdir()
    cores = os.cpu_count() or 1
    assert detect.network_fs(os.fsencode(tmp_path)) is None  # a local filesystem, asked for real
    assert passes.jobs_of(args, Settings()) == cores
    assert passes.jobs_of(argparse.Namespace(jobs=3, src="/nowhere", dst="/nowhere"), Settings(local_jobs=5)) == 3
    assert passes.jobs_of(argparse.Namespace(jobs=0, src="/nowhere", dst="/nowhere"), Settings(local_jobs=5)) == 5
    # A network filesystem cannot be mounted here: the kernel's answer for the target is replaced, as Lustre's.
    target = os.fsencode(tmp_path / "new")
    monkeypatch.setattr(detect, "fs_type", lambda p: detect.LL_SUPER_MAGIC if p == target else 0xEF53)
    assert detect.network_fs(target) == "Lustre"
    assert passes.jobs_of(args, Settings()) == 2 * cores



@pytest.mark.parametrize("columns", [60, 150])
def test_help_is_as_wide_as_columns_says(site, columns: int) -> None:
    """Help text fills $COLUMNS (the width the command reads once, without shutil) and never runs past it."""
    tmp, work, cfg, src = site
    lines = run(["copy", "--help"], work, COLUMNS=str(columns)).stdout.splitlines()
    widest = max(len(line) for line in lines)
    assert columns - 25 <= widest <= columns, (widest, lines)

# -- noise: the Lustre line and the rates of a tiny pass (issue 12) ----------------------------------------

def test_tiny_pass_summary_shows_no_rates(site):
    tmp, work, cfg, src = site
    res = run(["copy", str(src), str(tmp / "dst")], work, config=cfg)
    assert res.returncode == 0 and "Lustre" not in res.stderr, res.stderr
    assert "/s" not in res.stdout and "rate" not in res.stdout, res.stdout  # was "(49 B/s)", "33 entries/s"
    assert "  bytes     117 B" in res.stdout.splitlines()


def test_summary_rates_only_when_they_mean_something():
    from cmover.cli.render import summary_lines

    def rates(seconds: float, nbytes: int, files: int) -> list[str]:
        lines = summary_lines("copy", "complete", {"bytes_copied": nbytes, "files_scanned": files, "dirs": 1}, seconds)
        return [ln for ln in lines if "/s" in ln]

    assert rates(2.0, 4 << 20, 199) == ["  bytes     4.0 MiB (2.0 MiB/s)", "  rate      100 entries/s"]
    assert rates(0.9, 4 << 20, 1000) == []  # under a second: no rate at all
    assert rates(5.0, 3, 1000) == ["  rate      200 entries/s"]  # 3 bytes: no bytes rate
    assert rates(5.0, 4 << 20, 98) == ["  bytes     4.0 MiB (819.2 KiB/s)"]  # 99 entries: no entries rate


# -- cmover status rendering (issue 12): fitted to a terminal, plain when piped --------------------------

def _copy_status(host: str = "node07.example.org"):
    from cmover.ops.status import PassStatus

    totals = {"dirs": 563, "dirs_created": 562, "files_scanned": 2228, "files_copied": 2228,
              "bytes_copied": 17_406_362, "dirs_discovered": 1850}
    node = {"host": host, "processes": 4, "active": 4, "last_report_s": 1.0, "totals": dict(totals),
            "rates": {"dirs": 281.0, "files_scanned": 1123.0, "bytes_copied": 8.4 * 2**20}}
    return PassStatus(run_id="copy-20261122T010217-7261f30f", kind="copy", state="running", outstanding=1474,
                      queues={"cmover.copy.dirs": 1480, "cmover.copy.files": 0}, totals=totals, seconds=2.7,
                      rates=dict(node["rates"]), nodes=[node],
                      estimate={"dirs_processed": 563, "dirs_discovered": 1851, "dirs_left": 1288,
                                "fraction_done": 0.3, "seconds_left": 4.0})


@pytest.mark.parametrize("width", [80, 60, 100])
def test_status_lines_fit_the_terminal_and_never_split_a_number_from_its_unit(width):
    import re

    from cmover.cli.render import status_lines

    plain = status_lines(_copy_status(), None)
    fitted = status_lines(_copy_status(), width)
    assert all(len(line) <= width for line in fitted), [ln for ln in fitted if len(ln) > width]
    units = re.compile(r"\s*(?:[KMGTP]i)?B(?:/s)?\b|\s*s ago|\s*\S+/s")
    assert not [ln for ln in fitted if units.match(ln)], fitted  # no line starts with a unit
    # Nothing is cut off or shortened: the same words as the plain text, node values included.
    words = " ".join(fitted).split()
    for needle in ("16.6 MiB", "8.4 MiB/s", "1 s ago", "node07.example.org", "processes 4", "(more may be found)"):
        assert needle in " ".join(words), needle
    assert "…" not in "".join(fitted)
    # Piped: one line per field, two or more spaces between columns, the node table as aligned columns.
    fields = {re.split(r"\s{2,}", ln)[0]: re.split(r"\s{2,}", ln)[1:] for ln in plain[1:]}
    assert fields["files"] == ["2,228 scanned, 2,228 copied, 0 metadata updated, 0 hard-linked, 0 skipped, 0 failed"]
    assert fields["node"] == ["processes", "active", "dirs", "files", "copied", "bytes", "files/s", "bytes/s",
                              "last report"]
    assert fields["node07.example.org"] == ["4", "4", "563", "2,228", "2,228", "16.6 MiB", "1,123", "8.4 MiB/s",
                                            "1 s ago"]


def test_status_node_table_of_each_pass_shows_its_own_counters():
    import re

    from cmover.cli.render import status_lines
    from cmover.ops.status import PassStatus

    def header(kind: str, totals: dict) -> list[str]:
        node = {"host": "vm", "processes": 2, "active": 0, "last_report_s": 3.0, "totals": totals, "rates": {}}
        st = PassStatus(run_id=f"{kind}-1", kind=kind, state="complete", outstanding=0, queues={}, totals=totals,
                        nodes=[node])
        lines = status_lines(st, None)
        table = lines[-2:]
        assert re.split(r"\s{2,}", table[1])[0] == "vm"
        return re.split(r"\s{2,}", table[0])

    assert header("delete", {"entries_deleted": 3, "entries_kept": 47}) == [
        "node", "processes", "active", "dirs", "scanned", "deleted", "kept", "failed", "dirs/s", "deleted/s",
        "last report"]
    assert header("delete", {"entries_would_delete": 3}) == [
        "node", "processes", "active", "dirs", "scanned", "would delete", "kept", "failed", "dirs/s", "last report"]
    assert header("dirtime", {"dir_times_set": 9}) == [
        "node", "processes", "active", "dirs", "times set", "missing", "failed", "dirs/s", "last report"]


def test_the_cyclic_collector_runs_during_the_command_and_after_it(monkeypatch):
    """The entry point turns the collector off for the imports only: the command itself (a pass of hours, a
    watcher) runs with it on, what was imported frozen out of its sight; a caller that goes on gets it back on,
    whatever the command did (here: a parse error)."""
    import gc
    import importlib

    import cmover.cli
    from cmover.cli import operate

    entry = importlib.reload(cmover.cli).main  # the console script's function (the submodule shadows its name)
    seen = []
    monkeypatch.setattr(operate, "cmd_status", lambda args: seen.append((gc.isenabled(), gc.get_freeze_count())) or 0)
    try:
        assert entry(["status"]) == 0
        assert seen and seen[0][0] and seen[0][1] > 0
        assert gc.isenabled()
        with pytest.raises(SystemExit):
            entry(["copy", "--no-such-option"])
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        cmover.cli.main = sys.modules["cmover.cli.main"]  # as the package was: the submodule under its name


_COLLECTOR_PROBE = """
import gc, os, sys, types
from cmover.cli import passes

def spy():
    mods = [m for m in ("cmover.worker.bodies", "cmover.embedded.hub", "cmover.embedded.pool", "cmover.ops.start",
                        "cmover.ops.status") if m in sys.modules]
    print(gc.isenabled(), *mods, flush=True)
    os._exit(0)

passes.collect_from_now = spy
passes.load = lambda args, optional=False: types.SimpleNamespace(broker_configured=sys.argv[1] == "broker")
from cmover.cli import main
main(["copy", "/nowhere/src", "/nowhere/dst"])
"""


@pytest.mark.parametrize("mode", ["embedded", "broker"])
def test_a_pass_turns_the_collector_on_once_its_mode_is_imported(mode):
    """A pass imports its mode's modules with the collector still off, so that they are frozen with the rest:
    the embedded runner, hub, pool and task bodies, or the broker's start and status modules, never the other
    mode's. A new interpreter: this one has imported everything already."""
    r = subprocess.run([sys.executable, "-c", _COLLECTOR_PROBE, mode], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    words = r.stdout.split()
    assert words[0] == "False"
    if mode == "embedded":
        assert words[1:] == ["cmover.worker.bodies", "cmover.embedded.hub", "cmover.embedded.pool"]
    else:
        assert words[1:] == ["cmover.ops.start", "cmover.ops.status"]


def test_the_parser_builds_only_the_subcommand_named():
    """A command line that names its subcommand gets a parser of that one only (the others cost 6.7 ms and
    about 400 syscalls to build); options before it are skipped, help and anything unsure get the whole parser,
    and a name that is no subcommand gets the whole parser's error listing every choice."""
    import argparse

    from cmover.cli.main import _named_command, build_parser

    assert _named_command(["copy", "a", "b"]) == "copy"
    assert _named_command(["-vv", "--config", "c.py", "status", "--json"]) == "status"
    assert _named_command(["--config=c.py", "--verbose", "sync", "a", "b"]) == "sync"
    assert _named_command(["--help"]) is None and _named_command(["-x", "copy"]) is None and _named_command([]) is None

    def choices(p: argparse.ArgumentParser) -> list[str]:
        return list(next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices)

    every = choices(build_parser())
    assert len(every) == 19 and "copy" in every and "watch" in every
    assert choices(build_parser("copy")) == ["copy"]
    assert choices(build_parser("no-such-command")) == every
    whole, one = build_parser(), build_parser("copy")
    words = ["copy", "-j", "3", "--exclude-file", "x", "--changes=auto", "s", "d"]
    assert vars(one.parse_args(words)) == vars(whole.parse_args(words))


def test_the_command_imports_nothing_from_the_directory_of_its_script(monkeypatch, tmp_path):
    """Python puts a script's directory first on the path; the ``cmover`` entry point drops it (a stray module
    beside the script, in a venv's bin or /usr/local/bin, must not be imported in place of the library),
    through a symlinked script too, and leaves any other first entry alone."""
    import importlib

    import cmover.cli
    from cmover.cli import passes

    entry = importlib.reload(cmover.cli).main
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "cmover").write_text("# the console script\n")
    (bindir / "cmover_shadow_probe.py").write_text("SHADOWED = True\n")
    (tmp_path / "cmover-link").symlink_to(bindir / "cmover")
    seen = []

    def probe(args):
        try:
            importlib.import_module("cmover_shadow_probe")
            seen.append("imported")
        except ModuleNotFoundError:
            seen.append("not imported")
        return 0

    monkeypatch.setattr(passes, "cmd_pass", probe)
    try:
        for script, first in ((bindir / "cmover", str(bindir)), (tmp_path / "cmover-link", str(bindir)),
                              (tmp_path / "elsewhere", str(bindir))):
            monkeypatch.setattr(sys, "argv", [str(script)])
            monkeypatch.setattr(sys, "path", [first, *sys.path])
            sys.modules.pop("cmover_shadow_probe", None)
            assert entry(["copy", "/nowhere/src", "/nowhere/dst"]) == 0
        assert seen == ["not imported", "not imported", "imported"]
    finally:
        sys.modules.pop("cmover_shadow_probe", None)
        import gc

        gc.unfreeze()
        cmover.cli.main = sys.modules["cmover.cli.main"]  # as the package was: the submodule under its name
