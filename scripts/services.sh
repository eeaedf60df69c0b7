#!/usr/bin/env bash
# Service helpers for cmover's scripts: Debian packages, RabbitMQ, memcached, carbon (Graphite), the readers
# of the metrics the tests check (Prometheus and promtool, graphite-web) and the project virtualenv
# (ensure_runtime_venv for a mover node, ensure_venv for the tests).
#
# ensure_apt_packages, ensure_test_tools, ensure_rabbitmq, ensure_rabbitmq_api, ensure_memcached, ensure_carbon, ensure_prometheus
# and ensure_graphite_web assume Debian or Ubuntu (apt-get, dpkg, the memcache user of the Debian package);
# elsewhere install the same programs with the system's package manager (see "What cmover needs" in
# README.md). The venv functions only need python3 >= 3.11 with its venv module.
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
#   CMOVER_CARBON_RETENTION  its storage schema for metric paths starting with "cmover" (default 1s:30m:
#                       one point per second, so the tests read back exactly what was sent)

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
# rsync as a reference copier, gcc to build small helpers, mkfs.xfs and xfs_io for the project-id tests on a
# loop-mounted XFS, b3sum: the checker of verify manifests).
ensure_test_tools() {
    ensure_apt_packages rsync acl attr gcc xfsprogs b3sum
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

# The management HTTP API of the local node: the tests create their vhosts and users through it
# (`rabbitmq_init.sh --api`), each in a few milliseconds where a rabbitmqctl call starts an Erlang VM.
CMOVER_RABBITMQ_API=http://127.0.0.1:15672

_rabbitmq_api_answers() {
    # Any HTTP answer (401 included) means the plugin listens; only a refused connection means it does not.
    [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$CMOVER_RABBITMQ_API/api/overview" || true)" != 000 ]]
}

# ensure_rabbitmq_api: the rabbitmq_management plugin enabled on the running node and its API answering.
ensure_rabbitmq_api() {
    ensure_apt_packages curl
    if _rabbitmq_api_answers; then
        return 0
    fi
    _svc_log "enabling the rabbitmq_management plugin (the tests' broker set-up goes through its HTTP API)"
    if ! _svc_as_root rabbitmq-plugins enable rabbitmq_management </dev/null >/dev/null; then
        _svc_die "rabbitmq-plugins enable rabbitmq_management failed"
        return 1
    fi
    local deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)); do
        if _rabbitmq_api_answers; then
            return 0
        fi
        sleep 1
    done
    _svc_die "the RabbitMQ management API does not answer at $CMOVER_RABBITMQ_API 60 s after enabling the plugin"
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
CMOVER_CARBON_RETENTION="${CMOVER_CARBON_RETENTION:-1s:30m}"

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
    # First match wins. 1-second points for the tests' prefixes (cmover...; CMOVER_CARBON_RETENTION),
    # carbon's own metrics as shipped, and the usual minute resolution for anything else.
    cat >"$dir/conf/storage-schemas.conf" <<EOF
[cmover_tests]
pattern = ^cmover
retentions = $CMOVER_CARBON_RETENTION

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

# _svc_stop_packaged_service NAME: stop (and on systemd, disable) the service a package install just started.
# Called only right after this script installed the package, so a service the machine already ran is left
# alone. Without systemd the Debian packages' maintainer scripts start daemons through invoke-rc.d unless a
# policy-rc.d forbids it (as in most containers), so both cases end here.
_svc_stop_packaged_service() {
    local name="$1"
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        _svc_log "stopping and disabling the $name service the package install started"
        _svc_as_root systemctl disable --now "$name" >/dev/null 2>&1 || true
    elif [[ -x "/etc/init.d/$name" ]]; then
        _svc_as_root "/etc/init.d/$name" stop </dev/null >/dev/null 2>&1 || true
    fi
}

# ensure_prometheus: the prometheus package, for its server and promtool. The tests start private servers
# (loopback, a free port, data under a temporary directory) and check the alert rules with promtool; the
# package's own daemon (port 9090, as the prometheus user) is stopped when installing it started one, so
# that nothing of the install is left listening.
ensure_prometheus() {
    local fresh=
    _svc_pkg_installed prometheus || fresh=1
    ensure_apt_packages prometheus
    if [[ -n "$fresh" ]]; then
        _svc_stop_packaged_service prometheus
        if pgrep -u prometheus -x prometheus >/dev/null 2>&1; then
            _svc_die "the prometheus package started a daemon that does not stop (pid $(pgrep -u prometheus -x \
prometheus | tr '\n' ' ')); stop it by hand"
            return 1
        fi
    fi
    local tool
    for tool in prometheus promtool; do
        if ! "$tool" --version >/dev/null 2>&1; then
            _svc_die "$tool --version failed after installing the prometheus package"
            return 1
        fi
    done
}

# ensure_graphite_web: the graphite-web package (Django application, run by the system's python3). It has no
# daemon: the tests serve it themselves on loopback, with settings of their own pointing at the whisper
# files of their carbon-cache (CMOVER_CARBON_DIR) and its database in a temporary directory.
ensure_graphite_web() {
    ensure_apt_packages graphite-web
    if ! /usr/bin/python3 -c 'import django, graphite.settings, whisper' >/dev/null 2>&1; then
        _svc_die "graphite-web is installed but /usr/bin/python3 cannot import it (django, graphite.settings, whisper)"
        return 1
    fi
}

# _ensure_project_venv SPEC STAMP [STAMP...]: $REPO/.venv with `pip install -e SPEC`. pip only runs when
# pyproject.toml changed since the last successful install recorded in one of the STAMP files (sha256 of
# pyproject.toml), because a no-op `pip install -e` still costs several seconds of resolving; the first
# STAMP is the one written.
_ensure_project_venv() {
    local spec="$1"
    shift
    local venv="$REPO/.venv"
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
        if ! "$python" -m venv "$venv"; then
            rm -rf -- "$venv"
            _svc_die "$python -m venv failed (on Debian and Ubuntu: apt-get install python3-venv)"
            return 1
        fi
    fi

    # The project is installed in editable mode, so its modules are byte-compiled on import, and only cached
    # where the environment allows it (PYTHONDONTWRITEBYTECODE keeps the cache from being written): compiled
    # here, every command and worker starts from the cache (0.09 s less per command on the development
    # machine); a module edited later is recompiled here the next time, and until then on each import.
    "$venv/bin/python" -m compileall -q "$REPO/cmover" "$REPO"/*.py >/dev/null ||
        _svc_log "byte-compiling $REPO/cmover failed; commands still run, compiling it on each start"

    local want have stamp
    # The install mode is part of the stamp: a venv installed another way is installed again.
    want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1) compat"
    for stamp in "$@"; do
        have=
        [[ -r "$stamp" ]] && have="$(<"$stamp")"
        if [[ "$want" == "$have" ]]; then
            return 0
        fi
    done
    # Editable in "compat" mode: a .pth line with the checkout's path, where the default mode installs an
    # import hook whose own imports (pathlib, importlib.util) cost every command 8-10 ms of its start.
    _svc_log "pip install -e $spec"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat \
        -e "$spec"
    # Written only after a successful install, so a failed one is retried next time.
    printf '%s\n' "$want" >"$1"
}

# ensure_runtime_venv: what a mover node needs to run cmover and its workers: $REPO/.venv with the project
# installed in editable mode (`pip install -e .`: Celery, kombu, pymemcache, rich, ...), no test tools.
# A test environment (ensure_venv) already holds all of it.
ensure_runtime_venv() {
    _ensure_project_venv "$REPO" "$REPO/.venv/.cmover-runtime-stamp" "$REPO/.venv/.cmover-stamp"
}

# ensure_venv: the test environment, used by scripts/test.sh: the runtime plus the test extras
# (pytest, ruff, mypy, hypothesis, whisper; pyproject.toml's [test]).
ensure_venv() {
    _ensure_project_venv "${REPO}[test]" "$REPO/.venv/.cmover-stamp"
}

# Direct execution: `scripts/services.sh FUNCTION [ARGS...]`.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    case "${1:-}" in
    ensure_apt_packages | ensure_test_tools | ensure_rabbitmq | ensure_rabbitmq_api | ensure_memcached | ensure_carbon | carbon_info | \
        ensure_prometheus | ensure_graphite_web | ensure_runtime_venv | ensure_venv)
        "$@"
        ;;
    *)
        echo "usage: $0 {ensure_apt_packages PKG...|ensure_test_tools|ensure_rabbitmq|ensure_rabbitmq_api|ensure_memcached|ensure_carbon|carbon_info|ensure_prometheus|ensure_graphite_web|ensure_runtime_venv|ensure_venv}" >&2
        exit 2
        ;;
    esac
fi
