#!/usr/bin/env bash
# Start, stop or inspect this host's Celery workers for one cmover pass.
#
#     scripts/workers.sh PASS [start|stop|status|try_f|try_d] [CELERY ARGS...]
#
#   start   (default) two detached workers: a dir worker on queue cmover.PASS.dirs and a file worker
#           on cmover.PASS.files, each with a pid file under $CMOVER_VAR/run; every worker of this
#           host logs to $CMOVER_VAR/log/cmover_HOST.log, rotated at 100 MiB with 10 backups
#           (concurrent-log-handler: safe with many writing processes; CMOVER_LOG_MAX_BYTES and
#           CMOVER_LOG_BACKUPS change the limits)
#   stop    warm shutdown (SIGTERM): running tasks finish, then the workers exit; waits for them
#   status  which of the two are running
#   try_f   one file worker in the foreground, -c 1 -l debug, for debugging on one node
#   try_d   the same for directories
# Arguments after the subcommand are passed to `celery worker` (start, try_f, try_d). With no
# subcommand, arguments starting with '-' go to start.
#
# Environment:
#   CMOVER_DIR_CONCURRENCY   dir worker processes (default 4)
#   CMOVER_FILE_CONCURRENCY  file worker processes (default 2 x nproc: copies mostly wait on I/O)
#   CMOVER_LOGLEVEL          log level of detached workers (default info)
#   CMOVER_VAR               state directory; pid files in run/, logs in log/ (default <repo>/var)
#   CMOVER_STOP_WAIT         seconds `stop` waits for in-flight tasks (default 600)
#   CMOVER_CONFIG            passed through to the workers (made absolute first)
set -euo pipefail

prog="$(basename "$0")"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    echo "usage: $prog PASS [start|stop|status|try_f|try_d] [CELERY ARGS...]"
}

die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 2
}

if (($# < 1)); then
    usage >&2
    exit 2
fi
pass="$1"
shift
# The pass name becomes part of queue, node and file names.
[[ "$pass" =~ ^[A-Za-z0-9_]+$ ]] || die "invalid PASS '$pass' (allowed: A-Z a-z 0-9 _)"

cmd=start
if (($# > 0)) && [[ "$1" != -* ]]; then
    cmd="$1"
    shift
fi
case "$cmd" in
start | try_f | try_d) ;;
stop | status)
    (($# == 0)) || die "$cmd takes no further arguments"
    ;;
*)
    usage >&2
    exit 2
    ;;
esac

# A relative CMOVER_CONFIG was meant relative to the caller's cwd, which is about to change.
if [[ -n "${CMOVER_CONFIG:-}" ]]; then
    CMOVER_CONFIG="$(realpath -- "$CMOVER_CONFIG")"
    export CMOVER_CONFIG
fi
var="${CMOVER_VAR:-$repo/var}"
var="$(realpath -m -- "$var")"

# The workers find config.py in their working directory, and a detached worker keeps the cwd it
# was started from.
cd "$repo"

if [[ -x "$repo/.venv/bin/celery" ]]; then
    celery="$repo/.venv/bin/celery"
elif command -v celery >/dev/null 2>&1; then
    celery="$(command -v celery)"
else
    die "celery not found: run scripts/services.sh ensure_runtime_venv, or put celery on PATH"
fi

# Names carry the short host name so that several hosts can share one checkout (and one var/)
# without overwriting each other's pid and log files, and so that node names stay unique.
shorthost="$(hostname -s)"
pidfile() { printf '%s/run/%s_%s_%s.pid' "$var" "$pass" "$1" "$shorthost"; }
# One log per node for every pass and kind: workers share it through a multi-process rotating handler.
logfile() { printf '%s/log/cmover_%s.log' "$var" "$shorthost"; }
nodename() { printf '%s_%s_%s@%%h' "$pass" "$1" "$shorthost"; }
queue() {
    case "$1" in
    dir) printf 'cmover.%s.dirs' "$pass" ;;
    file) printf 'cmover.%s.files' "$pass" ;;
    esac
}

# Print the pid of this pass's KIND worker when it is running. The command line must contain the
# node name: a stale pid file whose pid was reused by another process must never get a signal.
running_pid() {
    local pf pid node
    pf="$(pidfile "$1")"
    [[ -r "$pf" ]] || return 1
    pid="$(tr -dc '0-9' <"$pf")"
    [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
    node="$(nodename "$1")"
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$node" || return 1
    printf '%s\n' "$pid"
}

positive_int() {
    [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"
}

# Options shared by every worker of this script. prefork: the parent keeps the broker heartbeats
# while children run hours-long copies. Prefetch 1: with late acks, the only unacknowledged
# messages are the running tasks, and nothing waits behind a long copy.
common_opts=(--pool=prefork --prefetch-multiplier=1)

start_one() {
    local kind="$1" concurrency="$2"
    shift 2
    local pid
    if pid="$(running_pid "$kind")"; then
        echo "$pass $kind worker: already running (pid $pid)"
        return 0
    fi
    "$celery" -A cmover.app worker --detach \
        -Q "$(queue "$kind")" -n "$(nodename "$kind")" -c "$concurrency" \
        "${common_opts[@]}" -l "${CMOVER_LOGLEVEL:-info}" \
        --pidfile="$(pidfile "$kind")" --logfile="$(logfile "$kind")" "$@"
}

do_start() {
    local dir_c="${CMOVER_DIR_CONCURRENCY:-4}"
    local file_c="${CMOVER_FILE_CONCURRENCY:-$(($(nproc) * 2))}"
    positive_int CMOVER_DIR_CONCURRENCY "$dir_c"
    positive_int CMOVER_FILE_CONCURRENCY "$file_c"
    mkdir -p -- "$var/run" "$var/log"

    start_one dir "$dir_c" "$@"
    start_one file "$file_c" "$@"

    # `--detach` returns before the worker has loaded the app, so a broken config or import shows
    # up only as a worker that is gone a moment later: look once more.
    sleep 3
    local kind pid rc=0
    for kind in dir file; do
        if pid="$(running_pid "$kind")"; then
            echo "$pass $kind worker: running (pid $pid), log $(logfile "$kind")"
        else
            echo "$pass $kind worker: FAILED to start, last lines of $(logfile "$kind"):" >&2
            tail -n 20 -- "$(logfile "$kind")" >&2 2>/dev/null || true
            rc=1
        fi
    done
    return "$rc"
}

do_stop() {
    local wait="${CMOVER_STOP_WAIT:-600}"
    [[ "$wait" =~ ^[0-9]+$ ]] || die "CMOVER_STOP_WAIT must be a number of seconds, got '$wait'"
    local kind pid
    local -a pids=()
    for kind in dir file; do
        if pid="$(running_pid "$kind")"; then
            # SIGTERM is Celery's warm shutdown: no new tasks, running ones complete and are acked.
            kill -TERM "$pid"
            pids+=("$pid")
            echo "$pass $kind worker: sent TERM to pid $pid"
        else
            echo "$pass $kind worker: not running"
        fi
    done
    ((${#pids[@]} > 0)) || return 0

    echo "waiting up to ${wait}s for in-flight tasks to finish"
    local deadline=$((SECONDS + wait)) alive
    while :; do
        alive=()
        for pid in "${pids[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then
                alive+=("$pid")
            fi
        done
        ((${#alive[@]} > 0)) || break
        if ((SECONDS >= deadline)); then
            # Not escalated on purpose: killing a copy midway only causes a redelivery, and the
            # operator may prefer to wait longer.
            echo "still running after ${wait}s: pid ${alive[*]} (kill -QUIT PID for a cold shutdown)" >&2
            return 1
        fi
        sleep 1
    done
    echo "$pass workers stopped"
}

do_status() {
    local kind pid rc=0
    for kind in dir file; do
        if pid="$(running_pid "$kind")"; then
            echo "$pass $kind worker ($(nodename "$kind" | sed 's/@%h$//')): running (pid $pid)"
        else
            echo "$pass $kind worker ($(nodename "$kind" | sed 's/@%h$//')): not running"
            rc=3
        fi
    done
    return "$rc"
}

# Foreground, one process, debug logging, no pid or log file: for watching one worker at work.
# The node name gets a _try suffix so it does not clash with a detached worker on the same host.
do_try() {
    local kind="$1"
    shift
    exec "$celery" -A cmover.app worker \
        -Q "$(queue "$kind")" -n "${pass}_${kind}_try_${shorthost}@%h" -c 1 \
        "${common_opts[@]}" -l debug "$@"
}

case "$cmd" in
start) do_start "$@" ;;
stop) do_stop ;;
status) do_status ;;
try_f) do_try file "$@" ;;
try_d) do_try dir "$@" ;;
esac
