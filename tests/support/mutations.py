"""Random mutations of a tree for the change-journal tests, through a filesystem object.

:func:`mutate` makes ``n`` random changes of every kind a journal must carry to a target (create, delete,
rename and move files and directories, rename over a file, replace a file by a directory and back, chmod,
chown, xattrs, ACLs, rewrite keeping the size, hard links, touch, symlinks, FIFOs, new directory trees). Every
change goes through ``fs``: :class:`PlainFs` makes the calls plainly (a fanotify watcher sees them), the
changelog tests' ``support.changelog.ChangingFs`` also writes the records Lustre would.

The walk that picks the victims never goes through a symbolic link: the trees hold links to /usr and the
like, and a mutation through one would write outside the tree.
"""

from __future__ import annotations

import os
import random
import stat
import subprocess
from typing import Protocol

#: Every kind of change :func:`mutate` makes.
ALL_OPS = ("create", "delete", "rename", "rename_over", "move_dir", "rename_dir", "file_to_dir", "dir_to_file",
           "chmod", "chown", "xattr", "acl", "rewrite", "rewrite_link", "hardlink", "unlink_link", "touch", "symlink",
           "mkdir_tree", "fifo")
#: What a fanotify journal can carry in full: the data of a file with several names rewritten in place is
#: reported under one name only, and the trust rule then refuses the journal (tested on its own).
FANOTIFY_OPS = tuple(op for op in ALL_OPS if op != "rewrite_link")


class Fs(Protocol):
    root: bytes

    def write(self, path: bytes, data: bytes) -> None: ...
    def mkdir(self, path: bytes) -> None: ...
    def symlink(self, target: bytes, path: bytes) -> None: ...
    def mkfifo(self, path: bytes) -> None: ...
    def link(self, src: bytes, path: bytes) -> None: ...
    def unlink(self, path: bytes) -> None: ...
    def rmtree(self, path: bytes) -> None: ...
    def rename(self, old: bytes, new: bytes) -> None: ...
    def chmod(self, path: bytes, mode: int) -> None: ...
    def chown(self, path: bytes, uid: int, gid: int) -> None: ...
    def utime(self, path: bytes, ns: tuple[int, int]) -> None: ...
    def setxattr(self, path: bytes, name: str, value: bytes) -> None: ...
    def removexattr(self, path: bytes, name: str) -> None: ...
    def setfacl(self, path: bytes, *args: str) -> None: ...
    def copytree_new(self, path: bytes, files: dict[bytes, bytes]) -> None: ...


class PlainFs:
    """The calls of :class:`Fs` on the tree ``root``, made plainly; none follows a symbolic link. A subclass that
    records each call (support.changelog.ChangingFs) inherits :meth:`rmtree` and :meth:`copytree_new`, which
    go through the other calls."""

    def __init__(self, root: bytes = b"/") -> None:
        self.root = root

    def write(self, path: bytes, data: bytes) -> None:
        """Create ``path`` or rewrite it in place (truncated to ``data``)."""
        with open(path, "r+b" if os.path.lexists(path) else "xb") as fh:
            fh.write(data)
            fh.truncate()

    def mkdir(self, path: bytes) -> None:
        os.mkdir(path)

    def symlink(self, target: bytes, path: bytes) -> None:
        os.symlink(target, path)

    def mkfifo(self, path: bytes) -> None:
        os.mkfifo(path)

    def link(self, src: bytes, path: bytes) -> None:
        os.link(src, path)

    def unlink(self, path: bytes) -> None:
        os.unlink(path)

    def rmdir(self, path: bytes) -> None:
        os.rmdir(path)

    def rmtree(self, path: bytes) -> None:
        """Remove ``path`` and what lies below it, name by name through :meth:`unlink` and :meth:`rmdir`."""
        for dirpath, dirs, files in os.walk(path, topdown=False):
            for f in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
                self.unlink(os.path.join(dirpath, f))
            for d in dirs:
                if not os.path.islink(os.path.join(dirpath, d)):
                    self.rmdir(os.path.join(dirpath, d))
        self.rmdir(path)

    def rename(self, old: bytes, new: bytes) -> None:
        os.rename(old, new)

    def chmod(self, path: bytes, mode: int) -> None:
        os.chmod(path, mode, follow_symlinks=False)

    def chown(self, path: bytes, uid: int, gid: int) -> None:
        os.lchown(path, uid, gid)

    def utime(self, path: bytes, ns: tuple[int, int]) -> None:
        os.utime(path, ns=ns, follow_symlinks=False)

    def setxattr(self, path: bytes, name: str, value: bytes) -> None:
        os.setxattr(path, name, value, follow_symlinks=False)

    def removexattr(self, path: bytes, name: str) -> None:
        os.removexattr(path, name, follow_symlinks=False)

    def setfacl(self, path: bytes, *args: str) -> None:
        subprocess.run(["setfacl", *args, os.fsdecode(path)], check=True)

    def copytree_new(self, path: bytes, files: dict[bytes, bytes]) -> None:
        """A new directory with ``files`` in a sub-directory ``sub``."""
        self.mkdir(path)
        self.mkdir(os.path.join(path, b"sub"))
        for name, data in files.items():
            self.write(os.path.join(path, b"sub", name), data)


def entries(root: bytes) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """(regular files with one name, directories, regular files with several names) below ``root``, found
    without going through a symbolic link."""
    files, dirs, links = [], [], []
    for dirpath, dirnames, filenames in os.walk(root):
        # os.walk lists a symlink to a directory among the directories (without entering it).
        dirs.extend(p for p in (os.path.join(dirpath, d) for d in dirnames) if not os.path.islink(p))
        for f in filenames:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                (files if st.st_nlink == 1 else links).append(p)
    return files, dirs, links


def holds_links(d: bytes) -> bool:
    """Whether a regular file with several names lies below directory ``d``."""
    for dirpath, _dirs, files in os.walk(d):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            if st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
                return True
    return False


def mutate(fs: Fs, rng: random.Random, n: int, ops: tuple[str, ...] = ALL_OPS, prefix: bytes = b"m") -> list[str]:
    """``n`` random changes of ``ops`` below ``fs.root``, each through ``fs``; returns what was done (a change
    the tree did not allow is listed with its error). New names start with ``prefix``."""
    root = fs.root
    done: list[str] = []
    counter = [0]

    def fresh() -> bytes:
        counter[0] += 1
        return b"%s%d-%d" % (prefix, rng.randrange(1 << 30), counter[0])

    for _ in range(n):
        files, dirs, links = entries(root)
        op = rng.choice(ops)
        alldirs = [root, *dirs]
        # A moved or removed directory holding names of a hard-link group makes a journal pass walk (its
        # other names are unknown): tested on its own.
        movable = [d for d in dirs if not holds_links(d)]
        try:
            if op == "create" or not files and op not in ("move_dir", "rename_dir", "dir_to_file", "mkdir_tree",
                                                           "symlink", "fifo", "hardlink"):
                fs.write(os.path.join(rng.choice(alldirs), fresh()), rng.randbytes(rng.randrange(3000)))
            elif op == "delete":
                fs.unlink(rng.choice(files))
            elif op == "rename":
                fs.rename(rng.choice(files), os.path.join(rng.choice(alldirs), fresh()))
            elif op == "rename_over" and len(files) > 1:
                a, b = rng.sample(files, 2)
                fs.rename(a, b)
            elif op in ("move_dir", "rename_dir") and movable:
                d = rng.choice(movable)
                dest = os.path.dirname(d) if op == "rename_dir" else rng.choice(
                    [x for x in alldirs if x != d and not x.startswith(d + b"/")])
                fs.rename(d, os.path.join(dest, fresh()))
            elif op == "file_to_dir":
                p = rng.choice(files)
                fs.unlink(p)
                fs.mkdir(p)
                fs.write(os.path.join(p, b"inside"), b"now a directory")
            elif op == "dir_to_file" and movable:
                d = rng.choice(movable)
                fs.rmtree(d)
                fs.write(d, b"now a file")
            elif op == "chmod":
                p = rng.choice(files + dirs)
                fs.chmod(p, rng.choice([0o600, 0o640, 0o755, 0o700 if os.path.isdir(p) else 0o444]))
            elif op == "chown":
                fs.chown(rng.choice(files), rng.choice([0, 1000, 1003]), rng.choice([0, 1001, 1004]))
            elif op == "xattr":
                p = rng.choice(files)
                names = [x for x in os.listxattr(p) if x.startswith("user.")]
                if names and rng.random() < 0.5:
                    fs.removexattr(p, rng.choice(names))
                else:
                    fs.setxattr(p, f"user.m{rng.randrange(5)}", rng.randbytes(8))
            elif op == "acl":
                p = rng.choice(files)
                if rng.random() < 0.3:
                    fs.setfacl(p, "-b")
                else:
                    fs.setfacl(p, "-m", f"u:{rng.randrange(4000, 4100)}:r--")
            elif op == "rewrite" or op == "rewrite_link" and links:
                p = rng.choice(files if op == "rewrite" else links)
                fs.write(p, rng.randbytes(os.path.getsize(p)))
            elif op == "hardlink":
                p = os.path.join(rng.choice(alldirs), fresh())
                fs.write(p, rng.randbytes(100))
                fs.link(p, os.path.join(rng.choice(alldirs), fresh()))
            elif op == "unlink_link" and links:
                fs.unlink(rng.choice(links))
            elif op == "touch":
                t = rng.randrange(10**18, 2 * 10**18)
                fs.utime(rng.choice(files + dirs), (t, t + rng.randrange(10**9)))
            elif op == "symlink":
                fs.symlink(rng.choice([b"../x", b"/etc/passwd", fresh()]), os.path.join(rng.choice(alldirs), fresh()))
            elif op == "fifo":
                fs.mkfifo(os.path.join(rng.choice(alldirs), fresh()))
            elif op == "mkdir_tree":
                fs.copytree_new(os.path.join(rng.choice(alldirs), fresh()),
                                {b"f%d" % i: rng.randbytes(50) for i in range(3)})
            else:
                continue
        except OSError as exc:
            done.append(f"{op}: {exc}")
            continue
        done.append(op)
    return done
