# cmover site configuration.
#
# Plain constants only: this file is read as data by cmover/core/settings.py, which rejects unknown names
# (a typo is an error, not a silently ignored setting, whatever the command). cmover reads the file
# named by --config, else by $CMOVER_CONFIG, else ./config.py in the current directory, else this one
# (beside the cmover package); `cmover -v ...` names the file used. Command-line options override the
# filter settings for one run.

# ---- Settings with the classic tool's names and meanings -------------------------------------------

# RabbitMQ virtual host and user name. The password is read from rabbitmq/rabbitmq_<USERNAME>.conf
# (written by rabbitmq/rabbitmq_init.sh, mode 0400) and the broker host from rabbitmq/rabbitmq.conf.
# Without rabbitmq/rabbitmq.conf no broker is configured and `cmover copy SRC DST` runs embedded.
USERNAME = "cmover"

# Filter files by atime: files whose atime is older than OLDEST_DATE seconds are not copied.
# 0 disables the filter. Example: 90 * 24 * 60 * 60 leaves out files nobody read for 90 days.
OLDEST_DATE = 0

# Filter files by mtime: files modified less than NEWEST_DATE seconds ago are not copied. Useful for
# early passes (recently changed files are likely to change again); set to 0 for the final pass.
NEWEST_DATE = 0

# Filter files by size: regular files larger than MAX_SIZE bytes, or smaller than MIN_SIZE bytes, are
# not copied (counted as files_size_filtered). A number, or a string with a K/M/G/T suffix ("10G");
# 0 disables each bound. The target entry of a file left out is neither replaced nor deleted.
MAX_SIZE = 0
MIN_SIZE = 0

# Minimal time in seconds between two counter reports of one worker process to memcached.
REPORT_INTERVAL = 30

# Send counters to memcached (read by `cmover status` and send_graphite.py).
STATS_ENABLED = True

# Distribute first-level target directories over the target's MDTs (Lustre DNE), round-robin over
# MDT_LIST below; deeper directories inherit their parent's MDT. False: every directory is created
# where the filesystem puts it. Without Lustre (or liblustreapi) this has no effect.
MDS_IS_STRIPED = True

# The delete pass refuses to run (and every delete task deletes nothing) unless the source root is a
# mount point: an unmounted source would otherwise look like "everything was deleted".
SOURCE_IS_MOUNT = False

# Copy from / to. Distributed passes work on these roots (or on a sub-path of them); every path a task
# receives must lie inside them.
source_mount = "/mnt/source"
target_mount = "/mnt/target"

# ---- New settings ---------------------------------------------------------------------------------

# Entries per file-batch task. A directory with up to BATCH files is handled by its directory task
# itself (one task fewer per directory); bigger directories are split into batches of BATCH, in the
# copy and delete passes twice as big every two batches up to 8 x BATCH (a directory of millions of
# entries: hundreds of tasks, not thousands); a grown copy batch still running after a second hands its
# rest out again in batches of BATCH.
BATCH = 1000

# Work one directory task may do inline before it hands subdirectories to other workers: small
# subtrees are walked by the task that found them (dispatch costs more than their work), large trees
# still spread over every worker. Counted in entries and in seconds, whichever is reached first (on
# Lustre the seconds, usually: an unchanged entry there costs two metadata RPCs). Past it, small sibling
# directories go out together, about this many entries per task. Within it, a task still hands work out
# whenever another pool process of the same machine waits for some (README, "Work sharing").
INLINE_ENTRIES = 10000
INLINE_SECONDS = 0.5

# A file-batch task that has worked this long hands the rest of its batch to a new task, so that no
# task comes near RabbitMQ's consumer timeout (30 minutes by default) on a directory of big files.
BATCH_SECONDS = 120

# Files of CHUNK_THRESHOLD bytes or more are copied in chunks of CHUNK_SIZE bytes by several workers
# at once (rounded up to a multiple of the target's stripe size on Lustre). The file appears under its
# name, with its metadata and mtime, only when every chunk is written. 0 disables chunked copies.
CHUNK_THRESHOLD = 1024**3
CHUNK_SIZE = 256 * 1024**2

# A file of path prefixes to leave out, one per line, relative to the source root (e.g. "scratch/tmp")
# or absolute under source_mount; "#" starts a comment. Empty string: no exclusions file.
EXCLUDE_FILE = ""

# MDT indices for first-level directories when MDS_IS_STRIPED is true, used round-robin.
# [] = every MDT of the target; [-1] = the filesystem's own balancing (like `lfs mkdir -i -1`).
# Placing a directory on a given MDT needs root (or mdt.*.enable_remote_dir_gid); when refused the
# directory is created normally and the refusal is counted (mdt_mismatches) and logged once.
MDT_LIST = []

# Lustre layout of new target files and directory defaults:
#   "keep"           same stripe count, size and pool as the source, PFL component by component
#                    (never OST indices); counts above the target's OST count are capped;
#   "classic"        stripe count kept when below 16, else all OSTs (size and pool: target default);
#   "target-default" nothing requested: the target directory's default layout decides.
# A layout the target refuses or ignores is counted (layout_mismatches) and logged once, never fatal.
LUSTRE_LAYOUT = "keep"

# Also compare layouts of files that are otherwise identical, and rewrite those whose layout differs
# from what LUSTRE_LAYOUT gives (costs two layout reads per file; `cmover copy --restripe`).
LUSTRE_RESTRIPE = False

# What a copy pass from a Lustre source does with HSM-released files (data only in the archive):
#   "import" a released file becomes a released stub on the target bound to the same archive id
#            (llapi_hsm_import): its data is never read; an archived, clean file is copied and marked
#            archived; `cmover hsm-rebind-list` then gives the copytool the (old FID, new FID) pairs;
#   "recall" released files are read like any other (the copytool restores each one first);
#   "skip"   released files are listed and left out; nothing of them is read.
# Without Lustre HSM on the source (or a liblustreapi with the HSM functions) this has no effect.
# `cmover copy --hsm` overrides it for one run. See "Migrating an HSM filesystem" in README.md.
HSM_POLICY = "import"

# liblustreapi to load. "" = the system's (liblustreapi.so.1 / liblustreapi.so). The environment
# variable CMOVER_LUSTREAPI overrides this.
LUSTREAPI = ""

# memcached holding the counters and the completion ledger of distributed passes. Run it with -M
# (return errors instead of evicting): a lost ledger makes `cmover status` answer "unknown".
MEMCACHED = "127.0.0.1:11211"

# A message that has been delivered this many times without completing (it keeps killing workers)
# is moved to the pass's dead-letter queue and listed as a failure instead of looping forever.
MAX_DELIVERIES = 5

# Pool processes (not threads) of the embedded mode (`cmover copy` with no broker, or --embedded):
# 0 = one per core, or two per core when SRC or DST is on a network filesystem (Lustre, NFS...), whose
# metadata calls keep a process waiting for a server. `cmover copy -j N` overrides it for one run
# (-j 0: this setting).
LOCAL_JOBS = 0

# Directory for node-local logs (relative paths are relative to this file's directory).
LOG_DIR = "var/log"

# Directory of the change journals written by `cmover watch` and of the records of passes that completed
# with no failure, which decide whether a journal may replace the walk (`--changes`); relative paths are
# relative to this file's directory. Node-local: run `cmover watch` and the journal-driven passes on the
# same machine.
CHANGES_DIR = "var/changes"

# Lustre changelog users cmover reads for journal-driven passes (--changes) over a Lustre source: one per
# MDT of the source filesystem, registered on the MDS with
#   lctl --device FSNAME-MDTxxxx changelog_register        (prints the user id, e.g. cl1)
# e.g. {"lustre-MDT0000": "cl1", "lustre-MDT0001": "cl1"}. An MDT of the source without a user here makes
# every --changes pass over it a full walk. cmover clears each user's records only up to what a pass
# that completed with no failure has read; give cmover users of its own.
CHANGELOG_USERS = {}

# Log lines of the workers (their log files) and of the cmover command (stderr): "text", or "json" for
# one JSON object per line with time, level, node, pass, run, path, message (names that are not UTF-8
# as {"b64": ...}), which a log shipper sends to Elasticsearch or Loki unchanged.
LOG_FORMAT = "text"

# Graphite (carbon) receiving the counters from send_graphite.py, run every minute from cron: its
# plaintext port (2003 by default) and the first part of every metric path, dot-separated words of
# letters, digits, '_' and '-'. Metrics are named <GRAPHITE_PREFIX>.<pass>.<counter>, e.g.
# cmover.copy.files_copied (see "Graphite" in README.md).
GRAPHITE_HOST = "127.0.0.1"
GRAPHITE_PORT = 2003
GRAPHITE_PREFIX = "cmover"

# Identity maps for a migration between sites whose users or groups have other numbers: a source uid
# (gid) FROM is written as TO on the target, in owners and in POSIX ACL entries, and the copy, delete,
# dirtime passes compare with the mapped ids. {FROM: TO, ...}, a list of "FROM:TO" strings, or a string
# naming a mapping file ("@users.map": one FROM:TO per line, # comments; relative to this file). Numeric
# ids only; ids not listed are kept. The command line's --usermap / --groupmap give a map for one pass
# when the setting here is empty; both at once is refused (see "Migrating between sites" in README.md).
UID_MAP = {}
GID_MAP = {}

# Clean-pass records (README, "The final pass: clean-pass proofs"): where the node that plans passes
# keeps the start of the last copy pass that completed with no failure ("" = $CMOVER_STATE_DIR, else
# ~/.local/state/cmover; relative paths are relative to this file's directory), and how many seconds
# the clocks of the mover nodes and file servers may differ (subtracted from that start).
# STATE_DIR = ""
# CLOCK_SKEW = 2
