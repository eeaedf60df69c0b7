"""Relative paths, confinement to a root, and the wire encoding of names.

Contract used everywhere in cmover:

* A *relative path* is ``bytes`` relative to a pass root: ``b""`` is the root itself, components are
  separated by ``b"/"``, and no component is empty, ``b"."`` or ``b".."``; no NUL byte, no leading
  slash. :func:`check_rel` is the one place that enforces this, so a path that passed it cannot
  leave its root through its own spelling. Symlinks on the way are the other half of confinement:
  the engine opens every directory component with ``O_NOFOLLOW`` (see :mod:`cmover.core.fsio`).
* On the wire (Celery messages, error lists, JSON output) a name is a JSON string when its bytes are
  valid UTF-8, otherwise ``{"b64": "<base64 of the bytes>"}``. This round-trips every byte sequence
  a file name can hold, with any JSON consumer.
"""

from __future__ import annotations

import base64
import binascii

from cmover.core.errors import ConfinementError

MAX_REL = 64 * 1024  # far above PATH_MAX; a longer "path" in a message is hostile or corrupt


def to_wire(name: bytes) -> str | dict[str, str]:
    """Encode a name (bytes) for JSON: plain string when valid UTF-8, else ``{"b64": ...}``."""
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(name).decode("ascii")}


def from_wire(obj: object) -> bytes:
    """Decode :func:`to_wire` output back to bytes; raise :class:`ConfinementError` on anything else."""
    if isinstance(obj, str):
        try:
            return obj.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates: not produced by to_wire
            raise ConfinementError(f"name on the wire is not valid UTF-8: {obj!r}") from exc
    if isinstance(obj, dict) and set(obj) == {"b64"} and isinstance(obj["b64"], str):
        text = obj["b64"]
        # The decoder takes excess padding ("AAAA=") even with validate=True: only what to_wire writes,
        # whole 4-character groups, is a name, so that one name has one spelling on the wire.
        if len(text) % 4:
            raise ConfinementError("name on the wire has invalid base64 (length not a multiple of 4)")
        try:
            return base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise ConfinementError("name on the wire has invalid base64") from exc
    raise ConfinementError(f"name on the wire has an unexpected type: {type(obj).__name__}")


def check_rel(rel: bytes) -> bytes:
    """Return ``rel`` unchanged if it is a valid relative path (see module doc), else raise ConfinementError."""
    if not isinstance(rel, bytes):
        raise ConfinementError(f"relative path must be bytes, not {type(rel).__name__}")
    if rel == b"":
        return rel
    if len(rel) > MAX_REL or b"\0" in rel:
        raise ConfinementError(f"invalid relative path {display(rel[:200])}")
    if rel.startswith(b"/"):
        raise ConfinementError(f"absolute path where a relative one is required: {display(rel[:200])}")
    for part in rel.split(b"/"):
        if part in (b"", b".", b".."):
            raise ConfinementError(f"path component {part!r} not allowed in {display(rel[:200])}")
    return rel


def rel_from_wire(obj: object) -> bytes:
    """Decode and validate a relative path received in a message."""
    return check_rel(from_wire(obj))


def name_from_wire(obj: object) -> bytes:
    """A single path component from a message (a batch entry): no slash, not empty, not '.' or '..', no NUL
    (what :func:`check_rel` refuses, for one component: without its split, on every name of every batch)."""
    name = from_wire(obj)
    if not name or b"/" in name or b"\0" in name or name == b"." or name == b".." or len(name) > MAX_REL:
        raise ConfinementError(f"batch entry {display(name[:200])} is not a single file name")
    return name


def names_from_wire(obj: object) -> list[bytes]:
    """A batch of names from a message: a list of single path components (see :func:`name_from_wire`)."""
    if not isinstance(obj, list):
        raise ConfinementError("batch names in message are not a list")
    return [name_from_wire(n) for n in obj]


def groups_from_wire(obj: object) -> list[tuple[bytes, list[bytes]]]:
    """The further (directory, names) pairs of a batch message (absent: none), each checked as
    :func:`rel_from_wire` and :func:`names_from_wire` check theirs."""
    if obj is None:
        return []
    if not isinstance(obj, list) or not all(isinstance(g, list) and len(g) == 2 for g in obj):
        raise ConfinementError("further batch directories in message are not a list of [directory, names] pairs")
    return [(rel_from_wire(rel), names_from_wire(names)) for rel, names in obj]


def mdt_from_wire(obj: object) -> int | None:
    """An MDT index of a directory message: None, -1 (the filesystem's choice) or an MDT index."""
    if obj is not None and (isinstance(obj, bool) or not isinstance(obj, int) or not -1 <= obj < 2**31):
        raise ConfinementError(f"MDT index in message is not -1 or an MDT index: {obj!r}")
    return obj


def dirs_from_wire(obj: object) -> list[tuple[bytes, int | None]]:
    """The further (directory, MDT) pairs of a directory message (absent: none), each checked as
    :func:`rel_from_wire` and :func:`mdt_from_wire` check theirs."""
    if obj is None:
        return []
    if not isinstance(obj, list) or not all(isinstance(d, list) and len(d) == 2 for d in obj):
        raise ConfinementError("further directories in message are not a list of [directory, MDT] pairs")
    return [(rel_from_wire(rel), mdt_from_wire(mdt)) for rel, mdt in obj]


def join(rel: bytes, name: bytes) -> bytes:
    """The relative path of entry ``name`` inside directory ``rel``."""
    return name if not rel else rel + b"/" + name


def components(rel: bytes) -> list[bytes]:
    return rel.split(b"/") if rel else []


def display(name: bytes) -> str:
    """A printable, unambiguous rendering of a name for logs and terminals.

    Valid UTF-8 without control characters is shown as is; anything else as a Python bytes literal,
    so a newline or an invalid byte can neither break a log line nor be confused with another name.
    The empty relative path, a pass root, is shown as ``.`` (no component can be ``.``, see
    :func:`check_rel`), so no message names an empty path.
    """
    if not name:
        return "."
    try:
        s = name.decode("utf-8")
    except UnicodeDecodeError:
        return repr(name)
    # A name that itself looks like an escaped one (b'...') is escaped too, so the two never collide.
    if any(ord(c) < 32 or ord(c) == 127 for c in s) or s != s.strip(" ") or s.startswith(("b'", 'b"')):
        return repr(name)
    return s


def is_within(path: bytes, root: bytes) -> bool:
    """True when the absolute, normalised ``path`` is ``root`` or lies below it (pure string test)."""
    root = root.rstrip(b"/") or b"/"
    if path == root:
        return True
    return path.startswith(root if root.endswith(b"/") else root + b"/")
