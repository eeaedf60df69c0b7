"""Identity maps for a migration between sites: numeric uid and gid translation. Pure.

A site that renumbers its users copies with ``UID_MAP`` / ``GID_MAP`` (config.py) or ``--usermap`` /
``--groupmap``: every owner, group and POSIX ACL entry whose id is a *FROM* of the map is written as
its *TO* on the target, and the copy decision compares the target with the mapped source (a mapped
owner is "identical"). Ids not in the map are kept. A map is applied once, never chained:
``1000:2000,2000:3000`` sends 1000 to 2000 and 2000 to 3000. Several FROMs may share a TO (site
accounts folded into one); an ACL whose named entries then meet on one id keeps one entry with the
union of their permissions.

:class:`IdMap` is the record a pass carries (:attr:`cmover.core.passes.PassSpec.idmap`); the parsers
(:func:`parse_text`, :func:`read_map_file`, :func:`from_config`) turn what an operator wrote into pairs
and raise :class:`~cmover.core.errors.ConfigError` with one line naming the problem and the fix.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from cmover.core.errors import ConfigError
from cmover.core.frozen import Frozen
from cmover.core.record import Record

Pairs = tuple[tuple[int, int], ...]

#: The largest id: (uid_t)-1 means "leave unchanged" to chown, so it is never an owner.
MAX_ID = 2**32 - 2
#: Pairs per map: every task message carries the maps (some 10 bytes a pair).
MAX_PAIRS = 65536

ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"
_ACL_NAMES = (ACL_ACCESS, ACL_DEFAULT)
# linux/posix_acl_xattr.h: a little-endian u32 version (2), then entries of (u16 tag, u16 perm, u32 id).
_ACL_VERSION = 2
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
_ACL_USER, _ACL_GROUP = 0x02, 0x08  # the tags whose id is a uid / gid (the others carry no id)

_PAIRS_RE = re.compile(r"\s*\d+\s*:\s*\d+\s*(,\s*\d+\s*:\s*\d+\s*)*,?\s*")


class IdMap(Frozen):
    """A uid map and a gid map (sorted ``(FROM, TO)`` pairs, FROMs unique); empty maps change nothing.

    Build it with validated pairs (:func:`check_pairs`); false when both maps are empty. Immutable, equal
    and hashed by its two maps (every pass spec carries one), with the lookup tables derived from them (why
    not a named tuple; a dataclass cost every command 1 ms of generated code at start).
    """

    __slots__ = ("uids", "gids", "_u", "_g")
    _fields = ("uids", "gids")

    uids: Pairs
    gids: Pairs
    _u: dict[int, int]
    _g: dict[int, int]

    def __init__(self, uids: Iterable[tuple[int, int]] = (), gids: Iterable[tuple[int, int]] = ()) -> None:
        put = object.__setattr__
        put(self, "uids", tuple(sorted(uids)))
        put(self, "gids", tuple(sorted(gids)))
        put(self, "_u", dict(self.uids))
        put(self, "_g", dict(self.gids))

    def __bool__(self) -> bool:
        return bool(self.uids or self.gids)

    def uid(self, uid: int) -> int:
        """The target uid of source uid ``uid``."""
        return self._u.get(uid, uid)

    def gid(self, gid: int) -> int:
        """The target gid of source gid ``gid``."""
        return self._g.get(gid, gid)

    def record(self, rec: Record) -> Record:
        """``rec`` as its copy should look on the target: mapped owner and group (``rec`` itself when unchanged)."""
        uid, gid = self._u.get(rec.uid, rec.uid), self._g.get(rec.gid, rec.gid)
        if uid == rec.uid and gid == rec.gid:
            return rec
        return rec._replace(uid=uid, gid=gid)

    def xattrs(self, values: dict[str, bytes]) -> dict[str, bytes]:
        """Extended attributes as they should be on the target: the ids of the POSIX ACLs mapped.

        Returns ``values`` itself when nothing changes (no map, no ACL, no mapped id in it).
        """
        if not self or not (ACL_ACCESS in values or ACL_DEFAULT in values):
            return values
        out = dict(values)
        for name in _ACL_NAMES:
            if name in out:
                out[name] = self.acl(out[name])
        return out

    def acl(self, value: bytes) -> bytes:
        """A ``system.posix_acl_access`` / ``_default`` value with the ids of its named user and group
        entries mapped, in the kernel's order (by tag, then id); entries that meet on one id are merged
        (union of permissions). A value that is not a version-2 ACL is returned as it is (the kernel
        judges it when it is set)."""
        n, rest = divmod(len(value) - _HEADER.size, _ENTRY.size)
        if n < 0 or rest or _HEADER.unpack_from(value)[0] != _ACL_VERSION:
            return value
        entries: dict[tuple[int, int], int] = {}
        changed = False
        for i in range(n):
            tag, perm, ident = _ENTRY.unpack_from(value, _HEADER.size + i * _ENTRY.size)
            if tag == _ACL_USER:
                new = self._u.get(ident, ident)
            elif tag == _ACL_GROUP:
                new = self._g.get(ident, ident)
            else:
                new = ident
            changed |= new != ident
            key = (tag, new)
            entries[key] = entries.get(key, 0) | perm
        if not changed:
            return value
        return _HEADER.pack(_ACL_VERSION) + b"".join(_ENTRY.pack(tag, perm, ident)
                                                    for (tag, ident), perm in sorted(entries.items()))

    def as_dict(self) -> dict[str, list[int]]:
        """The wire form: flat ``[FROM, TO, FROM, TO, ...]`` lists (compact: every task message carries it)."""
        return {"uid": [i for p in self.uids for i in p], "gid": [i for p in self.gids for i in p]}

    @classmethod
    def from_dict(cls, d: Any) -> IdMap:
        """Rebuild a map from its wire form; ValueError on anything malformed (a forged or damaged message)."""
        if not isinstance(d, dict):
            raise ValueError("idmap must be an object")
        maps = []
        for key in ("uid", "gid"):
            flat = d.get(key, [])
            if not isinstance(flat, list) or len(flat) % 2 or len(flat) > 2 * MAX_PAIRS:
                raise ValueError(f"idmap {key} must be a flat list of FROM, TO pairs")
            if not all(type(i) is int and 0 <= i <= MAX_ID for i in flat):
                raise ValueError(f"idmap {key} holds an id that is not an integer 0..{MAX_ID}")
            pairs = tuple(zip(flat[::2], flat[1::2], strict=True))
            if len({f for f, _ in pairs}) != len(pairs):
                raise ValueError(f"idmap {key} maps one id twice")
            maps.append(pairs)
        return cls(maps[0], maps[1])

    def describe(self) -> str:
        """One line for a log: how many ids each map translates."""
        return f"{len(self.uids)} uid(s) and {len(self.gids)} gid(s) mapped"


#: The map of a pass without identity maps.
NO_MAP = IdMap()


def _short(text: str) -> str:
    """Text for a one-line message: at most some 100 characters, on one line."""
    text = " ".join(text.split())
    return text if len(text) <= 100 else text[:97] + "..."


def _show(value: object) -> str:
    try:
        return _short(repr(value))
    except Exception:  # a config.py object whose repr fails
        return f"<{type(value).__name__} object>"


def check_pairs(pairs: Iterable[tuple[int, int]], where: str, fix: str) -> Pairs:
    """Validate ``(FROM, TO)`` pairs: integer ids 0..MAX_ID, each FROM once, at most MAX_PAIRS.

    ConfigError ``"{where}: {problem}; {fix}"`` otherwise. Returns them sorted.
    """
    seen: dict[int, int] = {}
    for pair in pairs:
        for i in pair:
            if type(i) is not int or not 0 <= i <= MAX_ID:
                raise ConfigError(f"{where}: {_show(i)} is not a numeric id (0 to {MAX_ID}); {fix}")
        frm, to = pair
        if frm in seen:
            raise ConfigError(f"{where}: id {frm} is mapped twice ({frm}:{seen[frm]} and {frm}:{to}); "
                              f"keep one of them; {fix}")
        seen[frm] = to
    if len(seen) > MAX_PAIRS:
        raise ConfigError(f"{where}: {len(seen)} pairs, more than {MAX_PAIRS}; map fewer ids; {fix}")
    return tuple(sorted(seen.items()))


def parse_pair(text: str, where: str, fix: str) -> tuple[int, int]:
    """One ``FROM:TO`` pair of numeric ids (spaces around them allowed)."""
    frm, sep, to = text.partition(":")
    frm, to = frm.strip(), to.strip()
    if not sep or not frm or not to:
        raise ConfigError(f"{where}: {_show(text.strip())} is not a FROM:TO pair; {fix}")
    for part in (frm, to):
        if not (part.isascii() and part.isdigit()):
            raise ConfigError(f"{where}: {_show(part)} in {_show(text.strip())} is not a numeric id (names are not "
                              f"mapped, only numbers); {fix}")
    return int(frm), int(to)


def read_map_file(path: str, fix: str) -> Pairs:
    """A mapping file: one ``FROM:TO`` pair per line; blank lines and ``#`` comments (also after a pair)
    ignored. ConfigError naming the file and line on anything else."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read mapping file {_short(path)}: {exc.strerror}; {fix}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"mapping file {_short(path)} is not UTF-8 text; write one FROM:TO pair per line") from None
    pairs = []
    for no, line in enumerate(lines, 1):
        text = line.split("#", 1)[0]
        if text.strip():
            pairs.append(parse_pair(text, f"{_short(path)}:{no}", "write one FROM:TO pair of numeric ids per line"))
    return check_pairs(pairs, _short(path), fix)


def parse_text(text: str, what: str, fix: str, base_dir: str = "") -> Pairs:
    """What an operator wrote for a map: ``FROM:TO[,FROM:TO...]`` pairs, ``@FILE`` or the path of a
    mapping file (relative paths from ``base_dir``, else the current directory). Text of pairs is always
    pairs; ``@`` names a file whatever its name looks like."""
    if text.startswith("@"):
        return read_map_file(os.path.join(base_dir, text[1:]), fix)
    if not _PAIRS_RE.fullmatch(text):
        path = os.path.join(base_dir, text)
        if text.strip() and os.path.isfile(path):
            return read_map_file(path, fix)
        if ":" not in text:
            raise ConfigError(f"{what}: {_show(text)} is neither FROM:TO pairs of numeric ids nor a mapping file; "
                              f"{fix}")
    # Pairs, or meant as pairs: the error names the one that is wrong.
    return check_pairs([parse_pair(p, what, fix) for p in text.split(",") if p.strip()], what, fix)


def from_config(value: object, name: str, base_dir: str) -> Pairs:
    """The pairs of config setting ``name`` (UID_MAP or GID_MAP): a dict ``{FROM: TO}``, a list of
    ``"FROM:TO"`` strings or ``(FROM, TO)`` pairs, or a string as on the command line (pairs, ``@FILE`` or
    a mapping file, relative to the config file's directory)."""
    fix = "fix it in config.py"
    if isinstance(value, str):
        return parse_text(value, name, fix, base_dir)
    if isinstance(value, Mapping):
        return check_pairs(value.items(), name, fix)
    pairs = []
    for item in value if isinstance(value, list | tuple) else ():
        if isinstance(item, str):
            pairs.append(parse_pair(item, name, fix))
        elif isinstance(item, list | tuple) and len(item) == 2:
            pairs.append((item[0], item[1]))
        else:
            raise ConfigError(f"{name}: {_show(item)} is not a FROM:TO pair; write {name} = {{1000: 5000}} or "
                              f"[\"1000:5000\"]; {fix}")
    return check_pairs(pairs, name, fix)
