"""ctypes binding of liblustreapi: the only module that loads it.

:func:`load` finds and loads the library once per process (lazily, on first use): the path in
``$CMOVER_LUSTREAPI`` or ``LUSTREAPI`` in config.py when set, otherwise the system's
``liblustreapi.so.1`` / ``liblustreapi.so``. Every bound function has the ``argtypes`` and ``restype``
declared in :mod:`cmover.lustre.abi`. The
library's own messages are switched off; its failures become :class:`OSError` with the path.

Two return conventions meet here (see docs): the old API returns a negative errno, the layout API
returns -1 or NULL with ``errno`` set. :class:`Library` hides both behind methods that return values
or raise. Calls are serialised by one process-wide lock: the library keeps global state (message
level, mount cache) and a layout handle carries a cursor.

Paths handed to the library are built from open descriptors (``/proc/self/fd/N[/name]``), so a
name is resolved relative to a directory cmover opened without following symlinks and never
through a path a user could swap meanwhile.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from ctypes import (
    byref,
    c_int,
    c_uint16,
    c_uint32,
    c_uint64,
    create_string_buffer,
)
from typing import Any

from cmover.lustre import ENV_LIBRARY, named_library
from cmover.lustre.abi import (
    COMP_USE_FIRST,
    COMP_USE_NEXT,
    CORE,
    LAYOUT_DEFAULT,
    LAYOUT_SPECIFIC,
    MIRROR_ID_MASK,
    O_LOV_DELAY_CREATE,
    OPTIONAL,
    PATH_MAX,
    PATTERN_CODES,
    PATTERN_NAMES,
    POOL_BUF,
    StripeParam,
    count_from_llapi,
    count_to_llapi,
)
from cmover.lustre.layout import EOF, Component, Layout

__all__ = ["ENV_LIBRARY", "O_LOV_DELAY_CREATE", "Library", "fd_path", "load", "reset"]

_lock = threading.RLock()


def _reset_lock_in_child() -> None:
    # A forked pool child must not inherit the lock held by another thread of its parent.
    global _lock
    _lock = threading.RLock()


os.register_at_fork(after_in_child=_reset_lock_in_child)


def lock() -> Any:
    """The process-wide lock every call into the library is made under (replaced in a forked child)."""
    return _lock


def _enc(path: str | bytes) -> bytes:
    return path if isinstance(path, bytes) else os.fsencode(path)


def _neg_errno(rc: int, path: str | bytes, what: str) -> None:
    """Old-API convention: a negative return value is the errno."""
    if rc < 0:
        code = -rc
        raise OSError(code, f"{what}: {os.strerror(code)}", os.fsdecode(path))


def _errno(path: str | bytes, what: str) -> OSError:
    """Layout-API convention: -1 or NULL with errno set."""
    code = ctypes.get_errno() or errno.EIO
    return OSError(code, f"{what}: {os.strerror(code)}", os.fsdecode(path))


def fd_path(fd: int, name: str | bytes | None = None) -> bytes:
    """A path the library can open that means ``fd`` (or ``name`` inside directory ``fd``)."""
    base = b"/proc/self/fd/%d" % fd
    return base if name is None else base + b"/" + _enc(name)


class Library:
    """liblustreapi, bound. Construct through :func:`load`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lib = ctypes.CDLL(path, use_errno=True)
        missing = [n for n in CORE if not hasattr(self._lib, n)]
        if missing:
            raise OSError(errno.ENOSYS, f"{path} lacks {', '.join(missing)} (Lustre 2.7 or later needed)")
        self.caps: frozenset[str] = frozenset(n for n in OPTIONAL if hasattr(self._lib, n))
        for name, (restype, argtypes) in {**CORE, **{n: OPTIONAL[n] for n in self.caps}}.items():
            fn = getattr(self._lib, name)
            fn.restype = restype
            fn.argtypes = argtypes
        self._fn: Any = self._lib
        self._fn.llapi_msg_set_level(0)  # the library prints every message on stderr by default

    @property
    def composite(self) -> bool:
        """Whether PFL layouts can be read and built (Lustre 2.10+ library)."""
        return {"llapi_layout_comp_use", "llapi_layout_comp_add", "llapi_layout_comp_extent_set"} <= self.caps

    # -- filesystem -------------------------------------------------------------------------------

    def fsname(self, path: str | bytes) -> str | None:
        """The Lustre filesystem name of ``path`` (which may not exist yet), or None when not on Lustre."""
        buf = create_string_buffer(PATH_MAX)
        with _lock:
            rc = self._fn.llapi_search_fsname(_enc(path), buf)
        if rc in (-errno.ENODEV, -errno.ENOENT, -errno.ENOTTY, -errno.EINVAL):
            return None
        _neg_errno(rc, path, "llapi_search_fsname")
        return buf.value.decode(errors="replace")

    def mount_point(self, path: str | bytes) -> bytes:
        mnt = create_string_buffer(_enc(path)[: PATH_MAX - 1], PATH_MAX)
        with _lock:
            rc = self._fn.llapi_search_mounts(_enc(path), 0, mnt, None)
        _neg_errno(rc, path, "llapi_search_mounts")
        return mnt.value

    def obd_count(self, path: str | bytes, mdt: bool) -> int:
        """Number of MDTs (``mdt``) or OSTs of the filesystem holding directory ``path``."""
        n = c_int(0)
        with _lock:
            rc = self._fn.llapi_get_obd_count(_enc(path), byref(n), 1 if mdt else 0)
        _neg_errno(rc, path, "llapi_get_obd_count")
        return n.value

    def mdt_index(self, fd: int, path: str | bytes = "") -> int:
        idx = c_int(-1)
        with _lock:
            rc = self._fn.llapi_file_fget_mdtidx(fd, byref(idx))
        _neg_errno(rc, path or fd_path(fd), "llapi_file_fget_mdtidx")
        return idx.value

    # -- layouts ----------------------------------------------------------------------------------

    @contextmanager
    def _handle(self, ptr: int | None, path: str | bytes, what: str) -> Iterator[int]:
        if not ptr:
            raise _errno(path, what)
        try:
            yield ptr
        finally:
            self._fn.llapi_layout_free(ptr)

    def _u64(self, fn: str, h: int, path: str | bytes) -> int:
        v = c_uint64(0)
        if getattr(self._fn, fn)(h, byref(v)) != 0:
            raise _errno(path, fn)
        return v.value

    def read_layout(self, fd: int, path: str | bytes = "") -> Layout:
        """The layout of open file ``fd`` (a directory: its default layout; none set reads as default).

        Composite layouts are read component by component from the first (the handle's cursor is
        left on the last one). Of a mirrored (FLR) file only the first mirror is described.
        """
        path = path or fd_path(fd)
        with _lock, self._handle(self._fn.llapi_layout_get_by_fd(fd, 0), path, "llapi_layout_get_by_fd") as h:
            if not self.composite:
                return Layout((self._component(h, path, plain=True),))
            composite = bool(self._fn.llapi_layout_is_composite(h)) if "llapi_layout_is_composite" in self.caps \
                else False
            mirrors = c_uint16(1)
            if "llapi_layout_mirror_count_get" in self.caps and self._fn.llapi_layout_mirror_count_get(
                    h, byref(mirrors)) != 0:
                raise _errno(path, "llapi_layout_mirror_count_get")
            comps: list[Component] = []
            first_mirror: int | None = None
            rc = self._fn.llapi_layout_comp_use(h, COMP_USE_FIRST)
            while rc == 0:
                cid = c_uint32(0)
                if self._fn.llapi_layout_comp_id_get(h, byref(cid)) != 0:
                    raise _errno(path, "llapi_layout_comp_id_get")
                mirror = cid.value & MIRROR_ID_MASK
                if first_mirror is None:
                    first_mirror = mirror
                if mirror == first_mirror:
                    comps.append(self._component(h, path, plain=not composite))
                rc = self._fn.llapi_layout_comp_use(h, COMP_USE_NEXT)
            if rc < 0:
                raise _errno(path, "llapi_layout_comp_use")
            return Layout(tuple(comps), composite=composite, mirror_count=max(1, mirrors.value))

    def _component(self, h: int, path: str | bytes, plain: bool) -> Component:
        start, end, flags = 0, EOF, 0
        if not plain:
            s, e, f = c_uint64(0), c_uint64(0), c_uint32(0)
            if self._fn.llapi_layout_comp_extent_get(h, byref(s), byref(e)) != 0:
                raise _errno(path, "llapi_layout_comp_extent_get")
            if self._fn.llapi_layout_comp_flags_get(h, byref(f)) != 0:
                raise _errno(path, "llapi_layout_comp_flags_get")
            start, end, flags = s.value, e.value, f.value
        raw_pattern = self._u64("llapi_layout_pattern_get", h, path)
        pattern = "raid0" if raw_pattern == LAYOUT_DEFAULT else \
            PATTERN_NAMES.get(raw_pattern & ~LAYOUT_SPECIFIC, f"raw:{raw_pattern:#x}")
        count_raw = self._u64("llapi_layout_stripe_count_get", h, path)
        size_raw: int | None
        try:
            size_raw = self._u64("llapi_layout_stripe_size_get", h, path)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # self-extending and foreign components have no stripe size
                raise
            size_raw = None
        pool = create_string_buffer(POOL_BUF)
        if self._fn.llapi_layout_pool_name_get(h, pool, POOL_BUF) < 0:
            raise _errno(path, "llapi_layout_pool_name_get")
        return Component(
            start=start, end=end, stripe_count=count_from_llapi(count_raw),
            stripe_size=None if size_raw in (None, LAYOUT_DEFAULT, 0) else size_raw,
            pattern=pattern, pool=pool.value.decode(errors="replace") or None, flags=flags,
            ost_indices=self._osts(h, count_raw),
        )

    def _osts(self, h: int, count_raw: int) -> tuple[int, ...]:
        if not 0 < count_raw <= 2000:
            return ()
        out: list[int] = []
        idx = c_uint64(0)
        for i in range(count_raw):
            if self._fn.llapi_layout_ost_index_get(h, i, byref(idx)) != 0 or idx.value >= LAYOUT_DEFAULT:
                break  # not instantiated (no objects yet)
            out.append(idx.value)
        return tuple(out)

    def _build(self, layout: Layout, path: str | bytes) -> int:
        """A new layout handle describing ``layout``; the caller frees it."""
        if layout.composite and not self.composite:
            raise OSError(errno.EOPNOTSUPP, "composite layouts need a Lustre 2.10+ liblustreapi", os.fsdecode(path))
        h = self._fn.llapi_layout_alloc()
        if not h:
            raise _errno(path, "llapi_layout_alloc")
        try:
            for i, c in enumerate(layout.components):
                if i > 0 and self._fn.llapi_layout_comp_add(h) != 0:
                    raise _errno(path, "llapi_layout_comp_add")
                if layout.composite and self._fn.llapi_layout_comp_extent_set(h, c.start, c.end) != 0:
                    raise _errno(path, "llapi_layout_comp_extent_set")
                self._set_component(h, c, path)
        except BaseException:
            self._fn.llapi_layout_free(h)
            raise
        return int(h)

    def _set_component(self, h: int, c: Component, path: str | bytes) -> None:
        f = self._fn
        size = c.stripe_size if c.pattern != "mdt" else (c.stripe_size or c.end)
        steps: list[tuple[str, Any]] = [("llapi_layout_pattern_set", PATTERN_CODES[c.pattern])]
        if c.pattern != "mdt":
            steps.append(("llapi_layout_stripe_count_set", count_to_llapi(c.stripe_count)))
        steps.append(("llapi_layout_stripe_size_set", LAYOUT_DEFAULT if size is None else size))
        if c.pool:
            steps.append(("llapi_layout_pool_name_set", c.pool.encode()))
        for name, value in steps:
            if getattr(f, name)(h, value) != 0:
                raise _errno(path, f"{name}({value!r})")

    def apply_layout(self, fd: int, layout: Layout, directory: bool = False) -> None:
        """Give open ``fd`` the layout ``layout``: a new, not yet written file created with
        :data:`O_LOV_DELAY_CREATE`, or a directory (its default layout). The library reopens the
        object through ``/proc/self/fd`` and sets the layout before any data exists.

        On a file that already has objects Lustre silently keeps the old layout: read it back.
        """
        path = fd_path(fd)
        flags = (os.O_RDONLY | os.O_DIRECTORY) if directory else (os.O_WRONLY | os.O_CREAT)
        with _lock:
            h = self._build(layout, path)
            try:
                out = self._fn.llapi_layout_file_open(path, flags | os.O_CLOEXEC, 0o600, h)
                if out < 0:
                    raise _errno(path, "llapi_layout_file_open")
            finally:
                self._fn.llapi_layout_free(h)
        os.close(out)

    def mkdir_on_mdt(self, dir_fd: int, name: str, mdt: int, mode: int = 0o700) -> None:
        """Create directory ``name`` in ``dir_fd`` on MDT ``mdt`` (-1: the MDS chooses, balancing).

        FileExistsError when it exists; PermissionError when remote directories are not allowed to this
        user (only root or the group in ``mdt.*.enable_remote_dir_gid`` may place directories).
        """
        path = fd_path(dir_fd, name)
        with _lock:
            if "llapi_dir_create" in self.caps:
                # "create only" (2.15+): an existing directory is an error, never restriped.
                param = StripeParam(lsp_stripe_offset=mdt, lsp_stripe_count=0, lsp_is_create=True)
                rc = self._fn.llapi_dir_create(path, mode, byref(param))
            else:
                rc = self._fn.llapi_dir_create_pool(path, mode, mdt, 0, 0, None)
        _neg_errno(rc, path, "llapi_dir_create")


_loaded: tuple[Library | None, str] | None = None


def load(configured: str = "") -> tuple[Library | None, str]:
    """The library for this process and a one-line account of where it came from or why it is absent.

    ``$CMOVER_LUSTREAPI`` wins over ``configured`` (config ``LUSTREAPI``); an explicitly named library
    that cannot be loaded is reported as such (it is never silently replaced by another).
    """
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _load(named_library(configured))
        return _loaded


def reset() -> None:
    """Forget the loaded library (tests switch between the stand-in builds)."""
    global _loaded
    with _lock:
        _loaded = None


def _load(explicit: str) -> tuple[Library | None, str]:
    if explicit:
        try:
            return Library(explicit), f"liblustreapi {explicit}"
        except OSError as exc:
            return None, f"liblustreapi {explicit} cannot be used ({exc})"
    for name in _library_names():
        try:
            return Library(name), f"liblustreapi {name}"
        except OSError:
            continue
    return None, "liblustreapi not found (install the Lustre client or set CMOVER_LUSTREAPI)"


#: The dynamic loader's cache of the libraries in its standard directories (``ldconfig`` writes it).
LD_CACHE = "/etc/ld.so.cache"


def _library_names() -> list[str]:
    """The names to give the dynamic loader for liblustreapi: the usual sonames (found wherever the loader
    looks: LD_LIBRARY_PATH, its cache, the standard directories), then any other version its cache lists.

    What ``ctypes.util.find_library`` would find (it reads the same cache through ``ldconfig -p``), without
    the ``ldconfig``, ``gcc`` and ``ld`` processes it starts when the library is missing: on a machine
    without Lustre they were a fifth of a small pass's syscalls, in every process that probes.
    """
    names = ["liblustreapi.so.1", "liblustreapi.so"]
    try:
        with open(LD_CACHE, "rb") as f:
            cached = set(re.findall(rb"liblustreapi\.so[.0-9]*", f.read()))
    except OSError:
        cached = set()
    return names + sorted(n.decode() for n in cached if n.decode() not in names)

