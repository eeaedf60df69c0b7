"""The C interface of liblustreapi as cmover binds it: sentinels, the one structure, every function's signature.

Declarations only (no library is loaded here): :mod:`cmover.lustre.llapi` binds :data:`CORE` and the
probed :data:`OPTIONAL` functions with these ``restype``/``argtypes`` (a layout handle is a pointer: left
to ctypes' default ``int`` it would be cut to 32 bits), and converts stripe counts with
:func:`count_from_llapi` / :func:`count_to_llapi`. The values are those of ``lustreapi.h``; the stand-in
in tests/lustre_standin/ is built against the same numbers.
"""

from __future__ import annotations

import ctypes
import os
from ctypes import (
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_int,
    c_size_t,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_ulonglong,
    c_void_p,
)
from typing import Any

# Sentinels of the layout API (lustreapi.h).
LAYOUT_DEFAULT = 0x1000000000000002
LAYOUT_WIDE_MIN = 0x1000000000000003  # "all OSTs"; up to WIDE_MAX: overstriping -1..-32 per OST
LAYOUT_WIDE_MAX = 0x1000000000000022
LAYOUT_SPECIFIC = 0x2000000000000000  # OR'd into a pattern: explicit OST list
PATTERN_NAMES = {0: "raid0", 2: "mdt", 4: "overstriping"}
PATTERN_CODES = {v: k for k, v in PATTERN_NAMES.items()}
COMP_USE_FIRST, COMP_USE_NEXT = 1, 3
O_LOV_DELAY_CREATE = os.O_NOCTTY | os.O_ASYNC  # open without allocating objects: the layout comes next
PATH_MAX = 4096
POOL_BUF = 17  # LOV_MAXPOOLNAME (15) + NUL, with a spare byte for libraries of <= 2.6 (16)
MIRROR_ID_MASK = 0x7FFF0000

class StripeParam(Structure):
    """``struct llapi_stripe_param`` without its trailing OST list (natural alignment, 32 bytes)."""

    _fields_ = [
        ("lsp_stripe_size", c_ulonglong),
        ("lsp_pool", c_char_p),
        ("lsp_stripe_offset", c_int),
        ("lsp_stripe_pattern", c_int),  # the LMV hash type for directories
        ("lsp_stripe_count", c_int),
        ("lsp_is_specific", c_bool),
        ("lsp_is_create", c_bool),  # 2.15+: fail with EEXIST rather than restripe an existing directory
        ("lsp_max_inherit", c_uint8),
        ("lsp_max_inherit_rr", c_uint8),
    ]


assert ctypes.sizeof(StripeParam) == 32

_P = c_void_p
_U64P = POINTER(c_uint64)
_U32P = POINTER(c_uint32)
# name -> (restype, argtypes). Core: Lustre 2.7 (layout API); absence means the library is unusable.
CORE: dict[str, tuple[Any, list[Any]]] = {
    "llapi_msg_set_level": (None, [c_int]),
    "llapi_search_fsname": (c_int, [c_char_p, c_char_p]),
    "llapi_search_mounts": (c_int, [c_char_p, c_int, c_char_p, c_char_p]),
    "llapi_get_obd_count": (c_int, [c_char_p, POINTER(c_int), c_int]),
    "llapi_file_fget_mdtidx": (c_int, [c_int, POINTER(c_int)]),
    "llapi_layout_get_by_fd": (_P, [c_int, c_uint32]),
    "llapi_layout_alloc": (_P, []),
    "llapi_layout_free": (None, [_P]),
    "llapi_layout_stripe_count_get": (c_int, [_P, _U64P]),
    "llapi_layout_stripe_count_set": (c_int, [_P, c_uint64]),
    "llapi_layout_stripe_size_get": (c_int, [_P, _U64P]),
    "llapi_layout_stripe_size_set": (c_int, [_P, c_uint64]),
    "llapi_layout_pattern_get": (c_int, [_P, _U64P]),
    "llapi_layout_pattern_set": (c_int, [_P, c_uint64]),
    "llapi_layout_pool_name_get": (c_int, [_P, c_char_p, c_size_t]),
    "llapi_layout_pool_name_set": (c_int, [_P, c_char_p]),
    "llapi_layout_ost_index_get": (c_int, [_P, c_uint64, _U64P]),
    "llapi_layout_file_open": (c_int, [c_char_p, c_int, c_uint32, _P]),
    "llapi_dir_create_pool": (c_int, [c_char_p, c_int, c_int, c_int, c_int, c_char_p]),
}
# Optional, probed: composite (PFL) layouts 2.10, llapi_dir_create and FLR 2.11.
OPTIONAL: dict[str, tuple[Any, list[Any]]] = {
    "llapi_layout_comp_use": (c_int, [_P, c_uint32]),
    "llapi_layout_comp_extent_get": (c_int, [_P, _U64P, _U64P]),
    "llapi_layout_comp_extent_set": (c_int, [_P, c_uint64, c_uint64]),
    "llapi_layout_comp_flags_get": (c_int, [_P, _U32P]),
    "llapi_layout_comp_id_get": (c_int, [_P, _U32P]),
    "llapi_layout_comp_add": (c_int, [_P]),
    "llapi_layout_is_composite": (c_bool, [_P]),
    "llapi_layout_mirror_count_get": (c_int, [_P, POINTER(c_uint16)]),
    "llapi_dir_create": (c_int, [c_char_p, c_uint32, POINTER(StripeParam)]),
}


def count_from_llapi(v: int) -> int | None:
    """A stripe count as the library reports it -> :class:`~cmover.lustre.layout.Component`'s (None: default;
    -1: all OSTs; -2..-32: overstriped that many times over all OSTs)."""
    if v == LAYOUT_DEFAULT or v == 0:
        return None
    if LAYOUT_WIDE_MIN <= v <= LAYOUT_WIDE_MAX:
        return -(v - LAYOUT_DEFAULT)  # -1: all OSTs; -2..-32: overstriped over all OSTs
    return v


def count_to_llapi(count: int | None) -> int:
    """The inverse of :func:`count_from_llapi`."""
    if count is None:
        return LAYOUT_DEFAULT
    if count < 0:
        return LAYOUT_DEFAULT - count
    return count
