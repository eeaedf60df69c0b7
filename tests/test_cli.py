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

REPO = Path(__file__).resolve().parent.parent
_ENTRY = Path(sys.executable).parent / "cmover"
CMOVER = [str(_ENTRY)] if _ENTRY.exists() else [sys.executable, "-m", "cmover"]
TIMEOUT = 120  # a hung embedded run fails the test instead of blocking the suite


def run(args: list[str], cwd: Path, config: Path | None = None, cmd: list[str] | None = None,
        **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CMOVER_CONFIG", "CMOVER_RABBITMQ_DIR")}
    if config is not None:
        env["CMOVER_CONFIG"] = str(config)
    env.update(env_extra)
    return subprocess.run((cmd or CMOVER) + args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


def tree_state(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
    return out


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


def assert_fatal(res: subprocess.CompletedProcess, *words: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cmover:"), res.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


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
    before = tree_state(tmp)
    res = run(args_fn(tmp, src), work, config=cfg if config == "default" else config, **env)
    assert_fatal(res, *words)
    assert tree_state(tmp) == before


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
    before = tree_state(tmp)
    res = run([], work, config=cfg, cmd=[sys.executable, str(REPO / "cmover_control.py")])
    assert res.returncode == 2 and "usage" in res.stderr
    assert tree_state(tmp) == before


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
    before = tree_state(tmp)
    res = run(["start"], work, config=cfg, cmd=[sys.executable, str(REPO / "cmover_control.py")])
    assert_fatal(res, "cannot reach the broker")
    assert tree_state(tmp) == before


def test_start_with_config_option_uses_that_config(broker_site):
    tmp, work, cfg, src = broker_site
    (cfg.parent / "rabbitmq" / "rabbitmq.conf").write_text("127.0.0.1:1\n")
    (cfg.parent / "rabbitmq" / "rabbitmq_cmover.conf").write_text("secret\n")
    _fatal_case(broker_site, lambda t, s: ["--config", str(cfg), "start", "copy"],
                "cannot reach the broker", "127.0.0.1:1", config=None)
