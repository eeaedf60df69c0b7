"""Counter names: the single list of what a pass counts (also the metric names sent to Graphite and
Prometheus). Engine code adds to a plain ``Counter[str]`` keyed by these names."""

from __future__ import annotations


class C:
    """Counter names (also the metric names sent to Graphite).

    Plain string constants, not an Enum: they are hashed several times per file on the hot path and an
    Enum member's hash is a Python-level call.
    """

    DIRS = "dirs"  # directories processed
    DIRS_FOUND = "dirs_discovered"  # subdirectories found in listings (the pass's start dir not included)
    DIRS_CREATED = "dirs_created"
    SCANNED = "files_scanned"  # non-directory entries looked at
    COPIED = "files_copied"  # data written (created or replaced)
    META = "files_meta_updated"  # owner/mode/times fixed, data kept
    SKIPPED = "files_skipped"  # identical on the target
    FILTERED = "files_filtered"  # left out by OLDEST_DATE / NEWEST_DATE
    SIZE_FILTERED = "files_size_filtered"  # left out by MIN_SIZE / MAX_SIZE
    EXCLUDED = "entries_excluded"  # left out by the exclusions file
    FAILED = "failed"  # per-item failures (files or directories)
    CHANGED = "changed_during_copy"  # source changed while copied; left for the next pass
    VANISHED = "vanished"  # listed, then gone before it was handled
    DEVICES = "devices_skipped"  # device nodes not created: the process may not (not root)
    NOT_PRESERVED = "not_preserved"  # entries written with another owner or group than their source's (not root)
    LINKED = "hardlinks_made"  # names linked to their group's first copied name
    LINK_DEFERRED = "hardlinks_deferred"  # names of a chunked group's file: linked by the next copy pass
    PROJECTS_SET = "project_ids_set"  # files and directories given their source's project id (cmover.core.projid)
    PROJECTS_UNSUPPORTED = "project_ids_unsupported"  # ...that the target filesystem cannot store (not copied)
    BYTES = "bytes_copied"
    CHUNKED = "files_chunked"  # huge files split into chunk tasks (each also counts as copied when finished)
    CHUNKS = "chunks_copied"
    # Lustre (counted by cmover.lustre.fs)
    LAYOUTS_SET = "layouts_set"  # files and directory defaults given their source's layout
    LAYOUT_MISMATCH = "layout_mismatches"  # layout asked but not obtained (target default kept)
    DIRS_PLACED = "dirs_placed"  # directories created on a chosen MDT
    MDT_MISMATCH = "mdt_mismatches"  # placement refused or not obtained
    RESTRIPED = "files_restriped"  # identical files rewritten for their layout (--restripe)
    # Lustre HSM (counted by cmover.engine.hsmcopy; see HSM_POLICY)
    HSM_IMPORTED = "hsm_imported"  # released files recreated as released stubs bound to the same archive
    HSM_ARCHIVED_KEPT = "hsm_archived_kept"  # target files holding archived data, marked archived on the target
    HSM_RECALLED = "hsm_recalled"  # released files read (restored by the copytool): HSM_POLICY recall
    HSM_SKIPPED = "hsm_skipped"  # released files left out and listed: HSM_POLICY skip
    HSM_LOST = "hsm_lost"  # files whose archive copy is lost: never read, listed as failures
    HSM_NOT_READ = "hsm_data_not_read"  # verify: released files (either side) whose data and holes were not read
    # delete pass
    DELETED = "entries_deleted"  # files, symlinks, specials and directories removed
    DIRS_DELETED = "dirs_deleted"
    WOULD_DELETE = "entries_would_delete"  # --dry-run
    DIRS_WOULD_DELETE = "dirs_would_delete"
    DEL_LIMITED = "deletes_over_limit"  # not deleted because --max-delete was reached
    KEPT = "entries_kept"  # present on the source
    # dirtime pass
    DIRTIMES = "dir_times_set"
    DIRS_MISSING = "dirs_missing"  # on the source or on the target (listed)
    # verify pass
    VERIFIED = "entries_verified"  # entries compared (both sides present), directories included
    DIFFERENCES = "differences"  # entries found different (each also counted under its diff_<category>)
    FILES_READ = "files_read"  # --content: files whose data was read (both sides)
    BYTES_READ = "bytes_read"  # --content: bytes read, source and target together
    HASHES_REUSED = "hashes_reused"  # --content --manifest: unchanged since the last verify, not read again
    CHUNKS_VERIFIED = "chunks_verified"  # --content: chunks of huge files compared by chunk tasks
    MANIFEST_LISTED = "manifest_listed"  # lines written to manifest shards (the merge must find as many)
    MANIFEST_LEFT_OUT = "manifest_left_out"  # names the checker cannot read (not UTF-8): compared, not listed
    DIFF_MISSING = "diff_missing"
    DIFF_EXTRA = "diff_extra"
    DIFF_TYPE = "diff_type"
    DIFF_SIZE = "diff_size"
    DIFF_MODE = "diff_mode"
    DIFF_UID = "diff_uid"
    DIFF_GID = "diff_gid"
    DIFF_MTIME = "diff_mtime"
    DIFF_ATIME = "diff_atime"
    DIFF_XATTR = "diff_xattr"
    DIFF_ACL = "diff_acl"
    DIFF_SYMLINK = "diff_symlink"
    DIFF_RDEV = "diff_rdev"
    DIFF_HARDLINK = "diff_hardlink"
    DIFF_HOLES = "diff_holes"
    DIFF_PROJECT = "diff_project"
    DIFF_LAYOUT = "diff_layout"
    DIFF_HSM = "diff_hsm"  # Lustre HSM state or archive id not what the copy gives (cmover.engine.hsmcopy)
    DIFF_CONTENT = "diff_content"
    RETRIED = "failures_retried"  # error-list records taken by `cmover retry-failed` (retried or gone)
    TASKS = "tasks"
    DEAD = "dead_lettered"

    ALL: tuple[str, ...] = ()


C.ALL = tuple(v for k, v in vars(C).items() if k.isupper() and k != "ALL" and isinstance(v, str))
