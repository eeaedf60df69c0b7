"""Safety checks of the delete pass: when the source may be taken as proof that an entry is gone.

The delete pass deletes a target entry only when ``lstat`` of its source counterpart raised
``FileNotFoundError``. That proves something only while the source is the filesystem the pass was
planned on:

* the source root is still the directory the pass was planned on (same device and inode: an unmount
  or an empty filesystem mounted over it changes them), still a mount point when the site requires
  one (SOURCE_IS_MOUNT), and not empty while the target is not -- :func:`source_root_problem`, checked
  by the preflight and again by every delete task (a mount can vanish mid-pass);
* the source directory was opened without following symlinks and lives on the source root's device
  (a different filesystem mounted inside the source is never taken as proof of anything) -- checked by
  the delete engine for every directory it works in.

A failed root check deletes nothing and fails loudly (:class:`SourceUnsafe`).
"""

from __future__ import annotations

import os
import stat

from cmover.core.errors import PreflightError
from cmover.core.passes import DeleteOptions, PassSpec
from cmover.core.paths import display


class SourceUnsafe(PreflightError):
    """The source root no longer looks like the one the pass was planned on: delete nothing."""


def source_root_problem(spec: PassSpec) -> str | None:
    """Why the source root cannot prove anything right now, or None when it can.

    Checked by the preflight and again by every delete task (a mount can vanish mid-pass).
    """
    root = spec.src_root
    try:
        st = os.stat(root)
    except OSError as exc:
        return f"source root {display(root)} is not accessible ({exc.strerror}); mount it"
    if not stat.S_ISDIR(st.st_mode):
        return f"source root {display(root)} is not a directory"
    opts = DeleteOptions.of(spec)
    if opts.src_id is not None and (st.st_dev, st.st_ino) != opts.src_id:
        return (f"source root {display(root)} is not the directory the pass was planned on (unmounted or "
                "another filesystem mounted over it); remount the source")
    if opts.src_must_be_mount and not os.path.ismount(root):
        return f"source root {display(root)} is not a mount point (SOURCE_IS_MOUNT is set); mount the source"
    try:
        with os.scandir(root) as it:
            empty = next(it, None) is None
    except OSError as exc:
        return f"source root {display(root)} cannot be listed ({exc.strerror}); check the mount"
    if empty:
        try:
            with os.scandir(spec.dst_root) as it:
                target_empty = next(it, None) is None
        except OSError:
            target_empty = False
        if not target_empty:
            return (f"source root {display(root)} is empty while the target is not; refusing to delete "
                    "everything (is the source mounted?)")
    return None
