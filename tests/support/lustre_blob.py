"""An independent decoder of Lustre layout blobs (lov_user_md v1/v3, lov_comp_md_v1), for tests.

The stand-in library stores layouts in this binary format; decoding them here, with offsets taken
from the struct layouts and not from the stand-in's code, checks that what tests see through the
binding is what real Lustre would hold.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

LOV_MAGIC_V1 = 0x0BD10BD0
LOV_MAGIC_V3 = 0x0BD30BD0
LOV_MAGIC_COMP_V1 = 0x0BD60BD0
LMV_USER_MAGIC = 0x0CD30CD0
LCME_FL_INIT = 0x10


@dataclass
class Plain:
    magic: int
    pattern: int
    stripe_size: int
    stripe_count: int
    offset_or_gen: int
    pool: str | None
    osts: list[int]
    size: int  # bytes this blob takes


@dataclass
class Entry:
    comp_id: int
    flags: int
    start: int
    end: int
    blob: Plain


def decode_plain(b: bytes) -> Plain:
    magic, pattern = struct.unpack_from("<II", b, 0)
    stripe_size, stripe_count, off = struct.unpack_from("<IHH", b, 24)
    if magic == LOV_MAGIC_V1:
        head, pool = 32, None
    elif magic == LOV_MAGIC_V3:
        head, pool = 48, b[32:48].split(b"\0", 1)[0].decode() or None
    else:
        raise ValueError(f"not a plain lov_user_md: magic {magic:#x}")
    nobj = (len(b) - head) // 24
    osts = [struct.unpack_from("<I", b, head + 24 * i + 20)[0] for i in range(nobj)]
    return Plain(magic, pattern, stripe_size, stripe_count, off, pool, osts, head + 24 * nobj)


def decode(b: bytes) -> Plain | list[Entry]:
    """A plain layout, or the entries of a composite one (sizes checked exactly)."""
    (magic,) = struct.unpack_from("<I", b, 0)
    if magic in (LOV_MAGIC_V1, LOV_MAGIC_V3):
        p = decode_plain(b)
        assert p.size == len(b), (p.size, len(b))
        return p
    assert magic == LOV_MAGIC_COMP_V1, hex(magic)
    size, _gen, _flags, count = struct.unpack_from("<IIHH", b, 4)
    assert size == len(b), (size, len(b))
    entries = []
    for i in range(count):
        cid, flags, start, end, off, esz = struct.unpack_from("<IIQQII", b, 32 + 48 * i)
        blob = decode_plain(b[off:off + esz])
        assert blob.size == esz
        entries.append(Entry(cid, flags, start, end, blob))
    return entries


def decode_lmv(b: bytes) -> tuple[int, int]:
    """(stripe count, MDT index) of an lmv_user_md."""
    magic, count, offset = struct.unpack_from("<IiI", b, 0)
    assert magic == LMV_USER_MAGIC and len(b) == 48, (hex(magic), len(b))
    return count, offset
