"""What this process may set on the target: owners, set-id bits, device nodes, privileged attributes.

An exact copy needs root (design §5). A regular user still copies data, modes, times, ``user.*``
attributes and ACLs, as ``cp -a`` and ``rsync -a`` do; what it cannot set is decided here once per
process from its capabilities (:func:`current`), so that the compare functions never ask for what the
process cannot give -- a second pass as a regular user does not recopy a file because its owner
differs -- and nothing that only root may do is attempted per file and counted as a failure.

The rules follow the kernel's:

* ``CAP_CHOWN`` (with ``CAP_FOWNER``, to set mode and times on a file owned by someone else) gives any
  owner and group; without it a new entry keeps this process's uid, and gets its source's group only
  when the process is a member of that group.
* A set-user-ID bit is kept only with its owner, a set-group-ID bit only with its group (and, without
  ``CAP_FSETID``, only for a group of this process: the kernel clears it otherwise). A setuid program of
  another user copied as a setuid program of the copying user would be a different program, so the bit
  is dropped, as ``cp -a`` does.
* Device nodes need ``CAP_MKNOD``; ``trusted.*`` and ``security.*`` attributes ``CAP_SYS_ADMIN``
  (``security.capability``: ``CAP_SETFCAP``). Without them those entries and attributes are left out.
* Without ``CAP_DAC_OVERRIDE`` a directory whose mode denies its owner write or search would lock the
  process out of its own copy: the copy pass gives target directories owner ``rwx`` and the dirtime pass,
  which runs last, sets their final mode.
"""

from __future__ import annotations

import functools
import logging
import os
import stat
from collections.abc import Callable

from cmover.core.frozen import NamedTuple

log = logging.getLogger(__name__)

# Capability numbers (linux/capability.h).
_CAP_CHOWN, _CAP_DAC_OVERRIDE, _CAP_FOWNER, _CAP_FSETID = 0, 1, 3, 4
_CAP_SYS_ADMIN, _CAP_MKNOD, _CAP_SETFCAP = 21, 27, 31
_SETID = stat.S_ISUID | stat.S_ISGID


class Privileges(NamedTuple):
    """What a process may set on the files it creates (see the module doc). Pure: no system calls."""

    uid: int  # effective uid: the owner of everything this process creates
    groups: frozenset[int]  # effective gid and supplementary groups
    chown: bool  # any owner and group (CAP_CHOWN and CAP_FOWNER)
    fsetid: bool  # keep set-group-ID whatever the group (CAP_FSETID)
    mknod: bool  # device nodes (CAP_MKNOD)
    dac: bool  # write into a directory whatever its mode (CAP_DAC_OVERRIDE)
    sys_admin: bool  # trusted.* and security.* attributes (CAP_SYS_ADMIN)
    setfcap: bool  # security.capability (CAP_SETFCAP)

    @property
    def everything(self) -> bool:
        """True when nothing of the source is out of reach (root)."""
        return self.chown and self.fsetid and self.mknod and self.dac and self.sys_admin and self.setfcap

    def owner(self, uid: int, gid: int) -> tuple[int, int]:
        """The (uid, gid) to give a copy of an entry owned by ``uid:gid``; -1 for one this process cannot
        give (the copy keeps what it was created with, as ``fchown`` does with -1)."""
        if self.chown:
            return uid, gid
        return (uid if uid == self.uid else -1), (gid if gid in self.groups else -1)

    def perm(self, perm: int, uid: int, gid: int) -> int:
        """The permission bits a copy of an entry with ``perm`` owned by ``uid:gid`` can carry (set-id
        bits dropped with an owner or group not kept)."""
        if not perm & _SETID or (self.chown and self.fsetid):
            return perm
        want_uid, want_gid = self.owner(uid, gid)
        if want_uid < 0:
            perm &= ~stat.S_ISUID
        if want_gid < 0 or not (self.fsetid or gid in self.groups):
            perm &= ~stat.S_ISGID
        return perm

    def loses(self, uid: int, gid: int) -> bool:
        """Whether a copy of an entry owned by ``uid:gid`` gets another owner or group than its source."""
        return not self.chown and (uid != self.uid or gid not in self.groups)

    def xattr(self, name: str) -> bool:
        """Whether this process may set extended attribute ``name`` (ACLs and ``user.*``: the owner may)."""
        if name.startswith("security."):
            return self.setfcap if name == "security.capability" else self.sys_admin
        if name.startswith("trusted."):
            return self.sys_admin
        return True

    def notice(self) -> str:
        """One line saying what a copy by this process does not preserve and why; empty for root."""
        if self.everything:
            return ""
        lost: list[str] = []
        missing: list[str] = []
        if not self.chown:
            lost.append(f"owners other than uid {self.uid} and groups it is not a member of, "
                        "with their setuid/setgid bits")
            missing.append("CAP_CHOWN")
        elif not self.fsetid:
            lost.append("setgid bits of groups it is not a member of")
            missing.append("CAP_FSETID")
        if not self.mknod:
            lost.append("device nodes (counted, not created)")
            missing.append("CAP_MKNOD")
        if not self.sys_admin:
            lost.append("trusted.* and security.* attributes")
            missing.append("CAP_SYS_ADMIN")
        elif not self.setfcap:
            lost.append("file capabilities (security.capability)")
            missing.append("CAP_SETFCAP")
        if not self.dac:
            missing.append("CAP_DAC_OVERRIDE")
        line = f"copying as uid {self.uid} without {', '.join(missing)}"
        line += f": not preserved: {'; '.join(lost)}." if lost else "."
        if not self.dac:
            line += " Directories keep owner rwx until the dirtime pass sets their modes."
        if lost:
            line += " Data, modes, times, user.* attributes and ACLs are copied; an exact copy needs root."
        return line


#: A process with every privilege (root): what the pure decision functions assume unless told otherwise.
ALL = Privileges(uid=0, groups=frozenset({0}), chown=True, fsetid=True, mknod=True, dac=True, sys_admin=True,
                 setfcap=True)


def _effective_caps() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return None


def probe() -> Privileges:
    """Read this process's privileges from the kernel (effective capabilities, euid and groups)."""
    euid = os.geteuid()
    caps = _effective_caps()
    if caps is None:  # no /proc: the classic rule, root may do everything
        caps = -1 if euid == 0 else 0

    def has(cap: int) -> bool:
        return bool(caps >> cap & 1)

    return Privileges(
        uid=euid, groups=frozenset({os.getegid(), *os.getgroups()}),
        chown=has(_CAP_CHOWN) and has(_CAP_FOWNER), fsetid=has(_CAP_FSETID), mknod=has(_CAP_MKNOD),
        dac=has(_CAP_DAC_OVERRIDE), sys_admin=has(_CAP_SYS_ADMIN), setfcap=has(_CAP_SETFCAP),
    )


@functools.cache
def current() -> Privileges:
    """This process's privileges, probed once (pool processes forked later inherit the answer)."""
    return probe()


_announced = False


def announce(say: Callable[[str], object] | None = None) -> None:
    """Say once per process what is not preserved (:meth:`Privileges.notice`); nothing for root.

    ``say`` prints the line (the command line's stderr); by default it is logged as a warning, which is
    what a distributed worker does when it starts.
    """
    global _announced
    if _announced:
        return
    _announced = True
    line = current().notice()
    if line:
        (say or log.warning)(line)
