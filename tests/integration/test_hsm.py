"""Migrating a Lustre HSM tree, through the liblustreapi stand-in, embedded and on two workers.

One source tree per HSM policy (import, recall, skip) holds a new file, archived, released, dirty,
lost, NORELEASE and NOARCHIVE files, a released file with a layout of its own, a released hard-link
group of three names in two directories and a released file of 1 TiB apparent size. The source root
is watched by a fanotify permission listener (tests/support/hsm_guard.py) that refuses every read of a
released file (and records it), so a read is an EPERM failure of the pass and a test failure: the
kernel proves that nothing is recalled. Trees are compared entry by entry (type, size, owner, mode,
ns times, xattrs and ACLs, HSM state and archive id, data where there is data), and the rebind list
line by line against the FIDs of both sides.
"""

from __future__ import annotations

import json
import os
import re
import stat
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.deploy import CMOVER, DIRS_Q, FILES_Q, REPO, Deployment, DeploymentSet, explain
from support.hsm_guard import ReadGuard
from support.lustre import BUILD, expected_fid

from cmover.core.counters import C

TIB = 1 << 40
M = 1 << 20
T0 = 1_700_000_000_000_000_000
SFID = r"0x[0-9a-f]+:0x[0-9a-f]+:0x[0-9a-f]+"
# user::rw- user:4321:r-- group::r-- mask::r-- other::--- (the binary form of system.posix_acl_access)
ACL = struct.pack("<I" + "HHI" * 5, 2, 1, 6, 0xFFFFFFFF, 2, 4, 4321, 4, 4, 0xFFFFFFFF, 0x10, 4, 0xFFFFFFFF,
                  0x20, 0, 0xFFFFFFFF)

# name -> (HSM flags, archive id, bytes of data or None for released (no data), size)
EXIT, DIRTY, REL, ARCH, NOREL, NOARCH, LOST = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
FILES: dict[str, tuple[int, int, int]] = {
    "new.txt": (0, 0, 100),
    "archived.dat": (EXIT | ARCH, 2, 5000),
    "released.dat": (EXIT | ARCH | REL, 2, 7000),
    "striped.dat": (EXIT | ARCH | REL, 2, 8000),
    "dirty.dat": (EXIT | ARCH | DIRTY, 2, 6000),
    "lost.dat": (EXIT | ARCH | REL | LOST, 2, 3000),
    "norelease.dat": (EXIT | ARCH | NOREL, 3, 4000),
    "noarchive.dat": (EXIT | ARCH | NOARCH, 3, 4500),
    "links/a": (EXIT | ARCH | REL, 5, 2000),
    "huge.dat": (EXIT | ARCH | REL, 4, TIB),
}
LINKS = ("links/b", "other/c")  # more names of links/a
RELEASED = ("released.dat", "striped.dat", "links/a", "huge.dat")
MARKED = ("archived.dat", "norelease.dat", "noarchive.dat")


def set_hsm(path: Path, flags: int, archive_id: int) -> None:
    os.setxattr(path, "trusted.hsm", struct.pack("<IIQQ", 0, flags, archive_id, 0))


def hsm_of(path: Path) -> tuple[int, int]:
    try:
        _, flags, arch, _ = struct.unpack("<IIQQ", os.getxattr(path, "trusted.hsm"))
    except OSError:
        return 0, 0
    return flags, arch


def make_tree(root: Path) -> None:
    from cmover.lustre import llapi
    from cmover.lustre.layout import Component, Layout

    lib, how = llapi.load()
    assert lib is not None, how
    (root / "links").mkdir(parents=True)
    (root / "other").mkdir()
    for i, (name, (flags, arch, size)) in enumerate(FILES.items()):
        path = root / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | llapi.O_LOV_DELAY_CREATE, 0o600)
        try:
            if name == "striped.dat":
                lib.apply_layout(fd, Layout((Component(stripe_count=2, stripe_size=4 * M, pool="fast"),)))
            if flags & REL:
                # Released: the size, and data only in its last block, as a released Lustre file reports one
                # allocated block -- which the sparse-copy path would find with SEEK_DATA and read.
                os.pwrite(fd, b"\x01", size - 1)
            else:
                os.write(fd, os.urandom(size))
        finally:
            os.close(fd)
        os.setxattr(path, "user.note", f"note {i}".encode())
        set_hsm(path, flags, arch)
        os.chown(path, 1000 + i, 2000 + i)
        os.chmod(path, 0o640 if i % 2 else 0o4755)
        os.utime(path, ns=(T0 + i * 1_000_000_007, T0 - i * 999_999_937))
    os.setxattr(root / "released.dat", "system.posix_acl_access", ACL)
    for extra in LINKS:
        os.link(root / "links/a", root / extra)


def snap(root: Path, data: bool) -> dict[str, dict[str, Any]]:
    """Every entry's type, size, owner, mode, ns times, copyable xattrs, HSM state (and data, when asked
    and present: a released file is never read)."""
    out: dict[str, dict[str, Any]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            rec: dict[str, Any] = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode),
                                   "uid": st.st_uid, "gid": st.st_gid}
            if stat.S_ISREG(st.st_mode):
                rec.update(size=st.st_size, mtime=st.st_mtime_ns, atime=st.st_atime_ns, hsm=hsm_of(p),
                           nlink=st.st_nlink,
                           xattrs={n: os.getxattr(p, n) for n in sorted(os.listxattr(p))
                                   if n.startswith(("user.", "system."))})
                if data and not hsm_of(p)[0] & REL:
                    fd = os.open(p, os.O_RDONLY | os.O_NOATIME)  # the source's atimes stay as they are
                    try:
                        rec["data"] = os.read(fd, st.st_size + 1)
                    finally:
                        os.close(fd)
            out[rel] = rec
    return out


@dataclass
class Site:
    src: Path
    dst: Path
    guard: ReadGuard
    env: dict[str, str]
    dep: Deployment
    expected: dict[str, dict[str, Any]]  # the source as it was made (no data of released files)


@pytest.fixture(scope="module")
def site(module_deployments: DeploymentSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    subprocess.run(["bash", str(REPO / "tests" / "lustre_standin" / "build.sh"), str(BUILD)], check=True)
    base = tmp_path_factory.mktemp("hsm")
    src, dst = base / "src", base / "dst"
    src.mkdir()
    dst.mkdir()
    lib = str(BUILD / "liblustreapi.so.1")
    saved = {k: os.environ.get(k) for k in ("STANDIN_FS", "CMOVER_LUSTREAPI")}
    os.environ["STANDIN_FS"] = f"{src},srcfs,8,1,fast;{dst},dstfs,4,1,fast"
    os.environ["CMOVER_LUSTREAPI"] = lib
    from cmover import lustre

    lustre.reset()
    try:
        trees = ("emb-import", "emb-recall", "emb-skip", "dist-import", "dist-recall", "dist-skip")
        for t in trees:
            make_tree(src / t)
        expected = snap(src / "emb-import", data=False)
        dep = module_deployments.new("hsm", src, dst, LUSTREAPI=lib, INLINE_ENTRIES=4, BATCH=3)
        dep.extra_env = {"STANDIN_FS": os.environ["STANDIN_FS"]}
        env = {**dep.env(), "CMOVER_LUSTREAPI": lib}
        with ReadGuard(src) as guard:
            yield Site(src, dst, guard, env, dep, expected)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        lustre.reset()


def embedded(site: Site, tree: str, *args: str) -> tuple[int, dict[str, Any], str]:
    r = subprocess.run([str(CMOVER), "copy", "--embedded", "-j", "2", "--json", *args, str(site.src / tree),
                        str(site.dst / tree)], env=site.env, cwd=REPO, text=True, capture_output=True, timeout=300)
    assert r.stdout, explain(r)
    return r.returncode, json.loads(r.stdout), r.stderr


def distributed(site: Site, tree: str, *args: str) -> tuple[int, dict[str, Any], str]:
    if not site.dep.workers:
        site.dep.init_broker()
        workers = [site.dep.start_worker("w1", (DIRS_Q, FILES_Q)), site.dep.start_worker("w2", (FILES_Q,))]
        for w in workers:
            w.wait_ready()
    r = site.dep.cmover("start", "copy", tree, "--wait", "--json", *args, timeout=300)
    assert r.stdout, explain(r)
    return r.returncode, json.loads(r.stdout), r.stderr


def rebind_list(site: Site, run_id: str, *extra: str) -> list[str]:
    r = subprocess.run([str(CMOVER), "hsm-rebind-list", "--run", run_id, *extra], env=site.env, cwd=REPO, text=True,
                       capture_output=True, timeout=120)
    assert r.returncode == 0, explain(r)
    return r.stdout.splitlines()


def check_import(site: Site, tree: str, rc: int, out: dict[str, Any], run: Any) -> None:
    src, dst = site.src / tree, site.dst / tree
    assert site.guard.released_reads == [], "released files were read"
    t = out["totals"]
    assert rc == 1 and out["failure_count"] == 1, out  # the lost file, and only it
    (lost,) = out["failures"]
    assert lost["path"].endswith("lost.dat") and lost["side"] == "source" and "lost" in lost["message"], lost
    assert (t[C.HSM_IMPORTED], t[C.HSM_ARCHIVED_KEPT], t[C.HSM_LOST]) == (4, 3, 1), t
    assert (t[C.COPIED], t[C.LINKED], t.get(C.HSM_RECALLED, 0), t.get(C.HSM_SKIPPED, 0)) == (5, 2, 0, 0), t
    # The target's HSM state is the source's (stubs released in the same archive, NORELEASE/NOARCHIVE
    # carried), except for the dirty file: copied, not marked, its archive copy being stale.
    want = {k: v for k, v in snap(src, data=True).items() if k != "lost.dat"}
    want["dirty.dat"]["hsm"] = (0, 0)
    got = snap(dst, data=True)
    assert got == want, [(k, want.get(k), got.get(k)) for k in sorted({*want, *got}) if want.get(k) != got.get(k)]
    assert os.lstat(dst / "links/a").st_ino == os.lstat(dst / "other/c").st_ino
    for name in RELEASED:  # stubs: no data at all on the target (the source's last block was never read)
        fd = os.open(dst / name, os.O_RDONLY)
        try:
            with pytest.raises(OSError):
                os.lseek(fd, 0, os.SEEK_DATA)
        finally:
            os.close(fd)
    assert os.getxattr(dst / "striped.dat", "trusted.lov")[:8] == struct.pack("<II", 0x0BD30BD0, 0x80000001)
    # The rebind list, line by line: old FID (the source inode) and new FID (the target inode).
    lines = rebind_list(site, run)
    assert all(re.fullmatch(f"{SFID} {SFID}", ln) for ln in lines), lines
    expect = sorted(f"{expected_fid(src / n)} {expected_fid(dst / n)}" for n in RELEASED + MARKED)
    assert sorted(lines) == expect


def check_second_pass(site: Site, tree: str, run: Any, again: Any) -> None:
    rc, out, _ = again
    t = out["totals"]
    assert site.guard.released_reads == [] and not site.guard.reads, (site.guard.released_reads, site.guard.reads)
    assert (t.get(C.COPIED, 0), t.get(C.META, 0), t.get(C.HSM_IMPORTED, 0), t.get(C.HSM_ARCHIVED_KEPT, 0)) \
        == (0, 0, 0, 0), t
    assert rc == 1 and out["failure_count"] == 1
    assert sorted(rebind_list(site, out["run_id"])) == sorted(rebind_list(site, run))


def _ctimes(root: Path) -> dict[str, tuple[int, int]]:
    """Inode and ctime of every file: any write (data, owner, mode, xattr, HSM state, times) moves the ctime."""
    return {str(p): (os.lstat(p).st_ino, os.lstat(p).st_ctime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("mode", ["emb", "dist"])
def test_import_then_a_pass_that_reads_and_writes_nothing(site: Site, mode: str) -> None:
    tree = f"{mode}-import"
    run = embedded if mode == "emb" else distributed
    site.guard.deny = True
    site.guard.reset()
    rc, out, err = run(site, tree) if mode == "emb" else run(site, tree, "--hsm", "import")
    check_import(site, tree, rc, out, out["run_id"])
    before = _ctimes(site.dst / tree)
    site.guard.reset()
    again = run(site, tree)
    check_second_pass(site, tree, out["run_id"], again)
    assert _ctimes(site.dst / tree) == before, "the second pass wrote to the target"
    if mode == "emb":
        assert "Lustre HSM: import" in err, err
        check_other_passes(site, tree)


def check_other_passes(site: Site, tree: str) -> None:
    """Verify (with --content), delete and dirtime over the imported tree read no released file; verify
    compares HSM state and archive id (one target state spoiled on purpose is reported)."""
    src, dst = site.src / tree, site.dst / tree
    good = os.getxattr(dst / "archived.dat", "trusted.hsm")
    set_hsm(dst / "archived.dat", EXIT | ARCH, 7)
    try:
        r = subprocess.run([str(CMOVER), "verify", "--embedded", "-j", "2", "--json", "--content", str(src),
                            str(dst)], env=site.env, cwd=REPO, text=True, capture_output=True, timeout=300)
    finally:
        os.setxattr(dst / "archived.dat", "trusted.hsm", good)
    assert r.stdout, explain(r)
    t = json.loads(r.stdout)["totals"]
    assert site.guard.released_reads == [], site.guard.released_reads
    # Every name of a released file: data and holes not read (content compared for the others).
    assert (t[C.HSM_NOT_READ], t[C.DIFF_HSM], t.get(C.DIFF_CONTENT, 0), t["diff_missing"]) == (6, 1, 0, 1), t
    assert "archived.dat: hsm: source exists,archived archive 2, target exists,archived archive 7" in r.stderr \
        or t[C.DIFF_HSM] == 1
    for kind in ("delete", "dirtime"):
        r = subprocess.run([str(CMOVER), kind, "--embedded", "--json", str(src), str(dst)], env=site.env, cwd=REPO,
                           text=True, capture_output=True, timeout=300)
        assert r.returncode == 0, explain(r)
    assert site.guard.released_reads == [], site.guard.released_reads


@pytest.mark.parametrize("mode", ["emb", "dist"])
def test_recall_reads_released_files(site: Site, mode: str) -> None:
    tree = f"{mode}-recall"
    site.guard.deny = False  # let the reads through: recall is the policy that reads (and counts them)
    site.guard.reset()
    try:
        rc, out, _ = (embedded if mode == "emb" else distributed)(site, tree, "--hsm", "recall")
    finally:
        site.guard.deny = True
    t = out["totals"]
    assert (t[C.HSM_RECALLED], t.get(C.HSM_IMPORTED, 0), t[C.HSM_LOST]) == (4, 0, 1), t
    # Read: every released file (one name of the link group: the one that copied); the lost file never.
    read = sorted(os.path.relpath(p, site.src / tree) for p, _ in site.guard.released_reads)
    assert set(read) - {"links/a", *LINKS} == {"released.dat", "striped.dat", "huge.dat"} and len(set(read)) == 4, \
        read
    dst = site.dst / tree
    assert hsm_of(dst / "released.dat") == (0, 0) and os.lstat(dst / "huge.dat").st_size == TIB
    assert rebind_list(site, out["run_id"]) == []


@pytest.mark.parametrize("mode", ["emb", "dist"])
def test_skip_lists_released_files_and_reads_nothing(site: Site, mode: str) -> None:
    tree = f"{mode}-skip"
    site.guard.deny = True
    site.guard.reset()
    rc, out, _ = (embedded if mode == "emb" else distributed)(site, tree, "--hsm", "skip")
    assert site.guard.released_reads == []
    t = out["totals"]
    assert (t[C.HSM_SKIPPED], t[C.HSM_LOST], t[C.COPIED]) == (6, 1, 5), t
    dst = site.dst / tree
    for name in (*RELEASED, *LINKS):
        assert not (dst / name).exists()
    prefix = "" if mode == "emb" else f"{tree}/"  # paths relative to the pass root: the mount in distributed mode
    assert sorted(rebind_list(site, out["run_id"], "--skipped")) == sorted(prefix + n for n in (*RELEASED, *LINKS))
    assert hsm_of(dst / "archived.dat") == (0, 0)  # only import marks archived files

