#!/usr/bin/env bash
# Service helpers for cmover's scripts: Debian packages, RabbitMQ, memcached, carbon (Graphite) and the
# project virtualenv.
#
# Sourced by scripts/test.sh (and any other script that needs the services):
#     source "$REPO/scripts/services.sh"; ensure_rabbitmq
# It can also be run directly to call one function, handy when setting up a machine by hand:
#     scripts/services.sh ensure_memcached
#
# Every function is idempotent: it checks first and only acts on what is missing, so a machine that
# already has everything pays a few hundred milliseconds. Nothing here depends on systemd, because
# containers and CI machines have none and the Debian packages do not start their daemons there.
#
# Environment:
#   CMOVER_PYTHON       interpreter used to create .venv (default: python3 on PATH)
#   CMOVER_CARBON_PORT  plaintext port of the tests' carbon-cache (default 2003)
#   CMOVER_CARBON_DIR   its config, whisper files, logs and pid file (default /var/tmp/cmover-carbon)

# When sourced, leave the caller's shell options alone (the caller decides about set -e);
# the functions below are written to work under `set -euo pipefail`.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
fi

# The repository root is the parent of this file's directory, wherever the caller's cwd is.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# memcached holds the completion counters; one fixed local instance is what the tests expect.
CMOVER_MEMCACHED_HOST=127.0.0.1
CMOVER_MEMCACHED_PORT=11211
CMOVER_MEMCACHED_PIDFILE=/run/memcached-cmover/memcached.pid

# Set once `apt-get update` has run in this shell, so several ensure_* calls refresh the lists once.
_CMOVER_APT_UPDATED=

_svc_log() {
    printf '[services] %s\n' "$*" >&2
}

_svc_die() {
    printf '[services] error: %s\n' "$*" >&2
    return 1
}

# Run a command as root: directly when we are root, else through sudo if there is one.
_svc_as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        _svc_die "need root (or sudo) to run: $*"
    fi
}

# True when the Debian package is fully installed. `dpkg -s` also succeeds for a package that was
# removed but left its config files behind, so the Status line is checked, not just the exit code.
_svc_pkg_installed() {
    dpkg -s "$1" 2>/dev/null | grep -qx 'Status: install ok installed'
}

# ensure_apt_packages PKG...: install the packages that are not installed yet, nothing else.
ensure_apt_packages() {
    local pkg
    local -a missing=()
    for pkg in "$@"; do
        _svc_pkg_installed "$pkg" || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    # A fresh machine has empty or stale package lists: without an update the install can fail
    # with "Unable to locate package". Skipped entirely when nothing is missing (no network needed).
    if [[ -z "$_CMOVER_APT_UPDATED" ]]; then
        _svc_log "apt-get update"
        _svc_as_root apt-get update -qq
        _CMOVER_APT_UPDATED=1
    fi
    _svc_log "installing: ${missing[*]}"
    # No standard input in CI: noninteractive keeps debconf from prompting. Use-Pty=0 drops dpkg's
    # progress redraws, which only clutter a log.
    _svc_as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}" </dev/null
}

# ensure_test_tools: what the tests call besides Python (setfacl/getfacl, getfattr/setfattr,
# rsync as a reference copier, gcc to build small helpers).
ensure_test_tools() {
    ensure_apt_packages rsync acl attr gcc
}

_rabbitmq_node_up() {
    rabbitmqctl -q status </dev/null >/dev/null 2>&1
}

# ensure_rabbitmq: the rabbitmq-server package installed and its node running and booted.
ensure_rabbitmq() {
    ensure_apt_packages rabbitmq-server

    if _rabbitmq_node_up; then
        # The node answers, but it may still be booting (or have its app stopped):
        # await_startup returns at once on a booted node.
        if rabbitmqctl -q await_startup --timeout 90 </dev/null >/dev/null 2>&1; then
            return 0
        fi
        _svc_die "RabbitMQ node answers but did not finish booting within 90 s (try: rabbitmqctl start_app)"
        return 1
    fi

    # Not running: the Debian package does not start it without systemd (policy-rc.d denies it in
    # containers), and after a reboot of a container nothing starts it either.
    local startlog="${TMPDIR:-/tmp}/cmover-rabbitmq-start.log"
    _svc_log "starting rabbitmq-server (output in $startlog)"
    # Redirect all three streams: the detached Erlang VM would otherwise keep our stdout open,
    # and a caller reading it through a pipe (CI, `| tee`) would wait forever for EOF.
    if ! _svc_as_root rabbitmq-server -detached </dev/null >>"$startlog" 2>&1; then
        _svc_die "rabbitmq-server -detached failed, see $startlog and /var/log/rabbitmq/"
        return 1
    fi

    # The VM takes a few seconds to register with epmd before rabbitmqctl can reach it at all, and
    # await_startup fails at once on an unreachable node, so poll until it succeeds.
    local deadline=$((SECONDS + 90))
    while ((SECONDS < deadline)); do
        if rabbitmqctl -q await_startup --timeout 10 </dev/null >/dev/null 2>&1; then
            _svc_log "rabbitmq-server is up (${SECONDS}s into this script)"
            return 0
        fi
        sleep 2
    done
    _svc_die "rabbitmq-server did not start within 90 s, see $startlog and /var/log/rabbitmq/"
}

# True when something on the memcached port answers the text protocol's `version` command.
# A bare TCP connect would also accept an unrelated service on that port.
_memcached_answers() {
    # Run in its own bash so that `timeout` can bound the connect and the read; the host and port
    # arrive as $1 and $2 of that shell, hence the single quotes.
    # shellcheck disable=SC2016
    timeout 2 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "version\r\n" >&3
        IFS= read -r line <&3 || exit 1
        [[ $line == VERSION* ]]
    ' _ "$CMOVER_MEMCACHED_HOST" "$CMOVER_MEMCACHED_PORT" 2>/dev/null
}

# ensure_memcached: the memcached package installed and a memcached answering on 127.0.0.1:11211.
ensure_memcached() {
    ensure_apt_packages memcached

    if _memcached_answers; then
        # An instance we did not start (e.g. the Debian service with its defaults) may evict keys
        # when full; completion counters must never vanish silently, so say so.
        local evictions
        # shellcheck disable=SC2016  # $1/$2 are expanded by the inner bash, as in _memcached_answers
        evictions="$(timeout 2 bash -c '
            exec 3<>"/dev/tcp/$1/$2" || exit 1
            printf "stats settings\r\nquit\r\n" >&3
            cat <&3
        ' _ "$CMOVER_MEMCACHED_HOST" "$CMOVER_MEMCACHED_PORT" 2>/dev/null | tr -d '\r' |
            awk '$2 == "evictions" { print $3 }')" || true
        if [[ "$evictions" == on ]]; then
            _svc_log "warning: the memcached on $CMOVER_MEMCACHED_HOST:$CMOVER_MEMCACHED_PORT evicts keys" \
                "(not started with -M); completion counters may be lost when it fills up"
        fi
        return 0
    fi

    local startlog="${TMPDIR:-/tmp}/cmover-memcached-start.log"
    _svc_log "starting memcached on $CMOVER_MEMCACHED_HOST:$CMOVER_MEMCACHED_PORT"
    # -M: answer "out of memory" instead of evicting, because a silently evicted completion counter
    #     would make a pass look finished (or never finished).
    # -m 1024 (MB) leaves room for the per-task markers of a large pass; -c 4096 connections because
    #     every worker process opens its own client.
    # -u memcache: memcached refuses to run as root without -u; the package creates that user.
    # Streams redirected for the same reason as rabbitmq-server above.
    # memcached writes its pid file (as FILE.tmp, then renamed) after dropping to the memcache user
    # and after detaching, so in root-owned /run it silently writes none: give it a directory it owns.
    _svc_as_root install -d -o memcache -g memcache -m 0755 "$(dirname "$CMOVER_MEMCACHED_PIDFILE")"
    if ! _svc_as_root memcached -d -u memcache -l "$CMOVER_MEMCACHED_HOST" -p "$CMOVER_MEMCACHED_PORT" \
        -M -m 1024 -c 4096 -P "$CMOVER_MEMCACHED_PIDFILE" </dev/null >>"$startlog" 2>&1; then
        _svc_die "memcached failed to start, see $startlog"
        return 1
    fi

    local i
    for ((i = 0; i < 50; i++)); do
        if _memcached_answers; then
            return 0
        fi
        sleep 0.2
    done
    _svc_die "memcached started but does not answer on $CMOVER_MEMCACHED_HOST:$CMOVER_MEMCACHED_PORT, see $startlog"
}

# carbon-cache (Graphite's receiver) for the exporter's tests: its own instance on loopback, with its
# config, whisper files, logs and pid file under CMOVER_CARBON_DIR, never the system's /etc/carbon.
CMOVER_CARBON_HOST=127.0.0.1
CMOVER_CARBON_PORT="${CMOVER_CARBON_PORT:-2003}"
CMOVER_CARBON_DIR="${CMOVER_CARBON_DIR:-/var/tmp/cmover-carbon}"

# True when something on the carbon port accepts a TCP connection (the plaintext protocol has no
# greeting to check).
_carbon_answers() {
    # shellcheck disable=SC2016  # $1/$2 are expanded by the inner bash, as in _memcached_answers
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$CMOVER_CARBON_HOST" "$CMOVER_CARBON_PORT" 2>/dev/null
}

# The pid in our instance's pid file when that process is alive.
_carbon_our_pid() {
    local pidfile="$CMOVER_CARBON_DIR/run/carbon-cache-a.pid" pid
    [[ -r "$pidfile" ]] || return 1
    pid="$(<"$pidfile")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && printf '%s\n' "$pid"
}

# carbon_info: where the tests find our carbon, one line: HOST PORT WHISPER_DIR.
carbon_info() {
    printf '%s %s %s\n' "$CMOVER_CARBON_HOST" "$CMOVER_CARBON_PORT" "$CMOVER_CARBON_DIR/storage/whisper"
}

# ensure_carbon: graphite-carbon installed and our carbon-cache answering on 127.0.0.1:$CMOVER_CARBON_PORT
# (2003 by default), storing metrics whose path starts with "cmover" every second so that the tests can
# read back exact values; also whisper for the tests' .venv (the pyproject.toml test extra; run
# ensure_venv). Does nothing when our instance already runs.
ensure_carbon() {
    ensure_apt_packages graphite-carbon

    if _carbon_our_pid >/dev/null && _carbon_answers; then
        return 0
    fi
    if _carbon_answers; then
        _svc_die "port $CMOVER_CARBON_HOST:$CMOVER_CARBON_PORT is taken by another process (not the carbon-cache" \
            "of $CMOVER_CARBON_DIR); stop it or set CMOVER_CARBON_PORT"
        return 1
    fi

    local dir="$CMOVER_CARBON_DIR"
    mkdir -p "$dir/conf" "$dir/storage/whisper" "$dir/storage/lists" "$dir/log" "$dir/run"
    # Rewritten on every start, so a changed port or schema takes effect. The pickle and cache-query
    # ports follow the plaintext port (2004 and 7002 for 2003, carbon's defaults), on loopback only.
    cat >"$dir/conf/carbon.conf" <<EOF
[cache]
STORAGE_DIR = $dir/storage/
LOCAL_DATA_DIR = $dir/storage/whisper/
WHITELISTS_DIR = $dir/storage/lists/
LOG_DIR = $dir/log/
PID_DIR = $dir/run/
USER =
DATABASE = whisper
MAX_CACHE_SIZE = inf
MAX_UPDATES_PER_SECOND = inf
MAX_CREATES_PER_MINUTE = inf
LINE_RECEIVER_INTERFACE = $CMOVER_CARBON_HOST
LINE_RECEIVER_PORT = $CMOVER_CARBON_PORT
ENABLE_UDP_LISTENER = False
PICKLE_RECEIVER_INTERFACE = $CMOVER_CARBON_HOST
PICKLE_RECEIVER_PORT = $((CMOVER_CARBON_PORT + 1))
CACHE_QUERY_INTERFACE = $CMOVER_CARBON_HOST
CACHE_QUERY_PORT = $((CMOVER_CARBON_PORT + 4999))
ENABLE_LOGROTATION = False
LOG_LISTENER_CONN_SUCCESS = False
WHISPER_AUTOFLUSH = False
EOF
    # First match wins. 1-second points for the tests' prefixes (cmover...), carbon's own metrics as
    # shipped, and the usual minute resolution for anything else.
    cat >"$dir/conf/storage-schemas.conf" <<'EOF'
[cmover_tests]
pattern = ^cmover
retentions = 1s:30m

[carbon]
pattern = ^carbon\.
retentions = 60s:1d

[default]
pattern = .*
retentions = 60s:1d
EOF
    # A pid file left by a killed instance makes carbon-cache refuse to start.
    if ! _carbon_our_pid >/dev/null; then
        rm -f "$dir/run/carbon-cache-a.pid"
    fi

    local startlog="$dir/log/start.log"
    _svc_log "starting carbon-cache on $CMOVER_CARBON_HOST:$CMOVER_CARBON_PORT (data in $dir)"
    # It daemonizes itself; streams redirected for the same reason as rabbitmq-server above.
    if ! carbon-cache --config="$dir/conf/carbon.conf" start </dev/null >>"$startlog" 2>&1; then
        _svc_die "carbon-cache failed to start, see $startlog and $dir/log/"
        return 1
    fi
    local i
    for ((i = 0; i < 100; i++)); do
        if _carbon_answers; then
            return 0
        fi
        sleep 0.2
    done
    _svc_die "carbon-cache started but does not answer on $CMOVER_CARBON_HOST:$CMOVER_CARBON_PORT, see" \
        "$startlog and $dir/log/"
}

# ensure_venv: $REPO/.venv with the project installed in editable mode plus the test extras.
# pip only runs when pyproject.toml changed since the last successful install (sha256 stamp),
# because a no-op `pip install -e` still costs several seconds of resolving.
ensure_venv() {
    local venv="$REPO/.venv"
    local stamp="$venv/.cmover-stamp"
    local python="${CMOVER_PYTHON:-python3}"

    # A venv whose interpreter is gone (e.g. the base Python was replaced) cannot be repaired in place.
    if [[ -e "$venv" ]] && ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
        _svc_log "removing broken virtualenv $venv"
        rm -rf -- "$venv"
    fi
    if [[ ! -x "$venv/bin/python" ]]; then
        if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            _svc_die "$python is missing or older than 3.11 (set CMOVER_PYTHON)"
            return 1
        fi
        _svc_log "creating virtualenv $venv"
        "$python" -m venv "$venv"
    fi

    local want have=
    want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
    [[ -r "$stamp" ]] && have="$(<"$stamp")"
    if [[ "$want" == "$have" ]]; then
        return 0
    fi
    _svc_log "pip install -e ${REPO}[test]"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "${REPO}[test]"
    # Written only after a successful install, so a failed one is retried next time.
    printf '%s\n' "$want" >"$stamp"
}

# Direct execution: `scripts/services.sh FUNCTION [ARGS...]`.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    case "${1:-}" in
    ensure_apt_packages | ensure_test_tools | ensure_rabbitmq | ensure_memcached | ensure_carbon | carbon_info | \
        ensure_venv)
        "$@"
        ;;
    *)
        echo "usage: $0 {ensure_apt_packages PKG...|ensure_test_tools|ensure_rabbitmq|ensure_memcached|ensure_carbon|carbon_info|ensure_venv}" >&2
        exit 2
        ;;
    esac
fi
