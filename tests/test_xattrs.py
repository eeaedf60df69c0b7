"""Extended attributes and POSIX ACLs through a whole copy pass (cmover.core.xattrs, metadata, copier)."""

from __future__ import annotations

import os
import subprocess

import pytest
from support.tree import Dir, File, Link, build

from cmover.core import xattrs


def _getfacl(path: bytes) -> str:
    out = subprocess.run(["getfacl", "-cp", os.fsdecode(path)], check=True, capture_output=True, text=True).stdout
    return "\n".join(sorted(line for line in out.splitlines() if line))


@pytest.fixture
def tree(roots):
    src, dst = roots
    build(src, {
        # trusted.lov is Lustre-internal: never copied raw
        b"f": File(b"data", xattrs={"user.note": b"\x00bin\xff", "trusted.site": b"t",
                                    "trusted.lov": b"raw-layout-with-ost-indices"}, acl="u:4321:r--"),
        b"d": Dir(acl="u:1234:rwx", default_acl="g:55:r-x"),
        b"l": Link(b"f", xattrs={"trusted.onlink": b"1"}),
    })
    return src, dst


def test_xattrs_and_acls_copied(tree, make_spec, run_copy):
    src, dst = tree
    res = run_copy(make_spec())
    assert not res.failures
    f, df = os.path.join(src, b"f"), os.path.join(dst, b"f")
    assert os.getxattr(df, b"user.note") == b"\x00bin\xff"
    assert os.getxattr(df, b"trusted.site") == b"t"
    with pytest.raises(OSError):
        os.getxattr(df, b"trusted.lov")
    assert _getfacl(df) == _getfacl(f)
    assert _getfacl(os.path.join(dst, b"d")) == _getfacl(os.path.join(src, b"d"))
    assert "default:group:55:r-x" in _getfacl(os.path.join(dst, b"d"))
    assert os.getxattr(os.path.join(dst, b"l"), b"trusted.onlink", follow_symlinks=False) == b"1"
    # The mtime (set last) survived the xattr writes.
    assert os.lstat(df).st_mtime_ns == os.lstat(f).st_mtime_ns


def test_xattr_change_alone_updates_metadata_in_place(tree, make_spec, run_copy):
    src, dst = tree
    run_copy(make_spec())
    df = os.path.join(dst, b"f")
    ino = os.lstat(df).st_ino
    os.setxattr(os.path.join(src, b"f"), b"user.note", b"changed")
    os.setxattr(df, b"user.extra", b"only on target")
    res = run_copy(make_spec())
    assert res.tally["files_meta_updated"] == 1
    assert os.getxattr(df, b"user.note") == b"changed"
    assert b"user.extra" not in [os.fsencode(n) for n in os.listxattr(df)]
    assert os.lstat(df).st_ino == ino
    again = run_copy(make_spec())
    assert again.tally["files_meta_updated"] == 0 and again.tally["files_copied"] == 0


@pytest.mark.parametrize("name,copied", [("user.x", True), ("security.selinux", True), ("trusted.lov", False),
                                         ("trusted.lma", False), ("lustre.lov", False), ("trusted.hsm", False)])
def test_lustre_internal_names_are_not_copyable(name, copied):
    assert xattrs.copyable(name) is copied


def test_sparse_file_with_trailing_hole(roots, make_spec, run_copy):
    src, dst = roots
    p = os.path.join(src, b"s")
    build(src, {b"s": File(size=64 << 20, data={0: b"head" * 1024})})  # 64 MiB, almost all a hole at the end
    run_copy(make_spec())
    q = os.path.join(dst, b"s")
    assert os.lstat(q).st_size == 64 << 20
    assert os.lstat(q).st_blocks <= os.lstat(p).st_blocks + 64
    with open(q, "rb") as a, open(p, "rb") as b:
        assert a.read() == b.read()


def test_files_created_under_a_default_acl_keep_only_their_own(roots, make_spec, run_copy):
    """Target files are created inside a directory whose default ACL names a user: each inherits an access ACL
    from it, whatever mode it is created with (its own, 0644 here, or 0600: metadata.create_mode). The copy
    ends with the source's attributes exactly: the inherited ACL removed where the source file has none."""
    src, dst = roots
    build(src, {b"d": Dir(default_acl="u:4321:rwx"), b"d/open": File(b"o", mode=0o644),
                b"d/grp": File(b"g", mode=0o640), b"d/acl": File(b"a", mode=0o644, acl="u:99:r--")})
    for name in (b"open", b"grp"):
        subprocess.run(["setfacl", "-b", os.fsdecode(os.path.join(src, b"d", name))], check=True)
        os.chmod(os.path.join(src, b"d", name), 0o644 if name == b"open" else 0o640)
    res = run_copy(make_spec())
    assert not res.failures and res.tally["files_copied"] == 3
    for name in (b"d", b"d/open", b"d/grp", b"d/acl"):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        assert _getfacl(d) == _getfacl(s), name
        assert os.lstat(d).st_mode == os.lstat(s).st_mode, name
    assert "user:4321" not in _getfacl(os.path.join(dst, b"d/open"))
