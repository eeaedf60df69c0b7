#!/usr/bin/env bash
# Prepare the RabbitMQ broker for cmover. Run on the broker host, as root:
#     rabbitmq/rabbitmq_init.sh [--host HOST[:PORT]] [USERNAME]
# or from any host, through the broker's management HTTP API (plugin rabbitmq_management):
#     rabbitmq/rabbitmq_init.sh --api http://BROKER:15672 [--host HOST[:PORT]] [USERNAME]
#
# Creates (or keeps) the vhost USERNAME, creates the user USERNAME or gives it a new password,
# grants it full rights on that vhost only, and writes the password to
# $DIR/rabbitmq_USERNAME.conf (mode 0400). With --host it also writes $DIR/rabbitmq.conf, whose
# presence switches `cmover copy` from embedded mode to this broker.
# Running it again is safe; it rotates the password, so restart the workers afterwards.
#
# Environment:
#   CMOVER_CONFIG        config file whose USERNAME is the default (default: <repo>/config.py)
#   CMOVER_RABBITMQ_DIR  where the .conf files go (default: the directory of this script)
#   CMOVER_RABBITMQ_API_CREDENTIALS  with --api: file holding one line ADMIN_USER:PASSWORD of a
#                        broker administrator, not readable by group or others
#                        (default: $CMOVER_RABBITMQ_DIR/rabbitmq-api.conf)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
prog="$(basename "$0")"

die() {
    # One line, exit 2: these are all usage or environment problems the operator must fix.
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 2
}

usage() {
    echo "usage: $prog [--api URL] [--host HOST[:PORT]] [USERNAME]"
}

host=
api=
username=
while (($# > 0)); do
    case "$1" in
    --host)
        (($# >= 2)) || die "--host needs a value"
        host="$2"
        shift 2
        ;;
    --host=*)
        host="${1#--host=}"
        shift
        ;;
    --api)
        (($# >= 2)) || die "--api needs a value"
        api="$2"
        shift 2
        ;;
    --api=*)
        api="${1#--api=}"
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    -*)
        usage >&2
        exit 2
        ;;
    *)
        [[ -z "$username" ]] || die "only one USERNAME may be given"
        username="$1"
        shift
        ;;
    esac
done

# The value becomes one line of a config file: no spaces, newlines or URL syntax. Brackets are
# allowed for an IPv6 literal ("[::1]:5672"); `]` must come first inside a bracket expression.
host_re='^[][A-Za-z0-9._:-]+$'
if [[ -n "$host" && ! "$host" =~ $host_re ]]; then
    die "invalid --host '$host' (expected HOST or HOST:PORT)"
fi

if [[ -z "$username" ]]; then
    config="${CMOVER_CONFIG:-$repo/config.py}"
    [[ -r "$config" ]] || die "no USERNAME given and cannot read $config (set CMOVER_CONFIG)"
    # config.py is plain Python constants; run it in isolation and take USERNAME.
    username="$(python3 -c 'import runpy,sys; print(runpy.run_path(sys.argv[1])["USERNAME"])' "$config")" ||
        die "cannot read USERNAME from $config"
fi

# The name is used as vhost, user and file name: keep it to characters safe in all three.
[[ "$username" =~ ^[A-Za-z0-9_.-]+$ ]] || die "invalid USERNAME '$username' (allowed: A-Z a-z 0-9 _ . -)"

dir="${CMOVER_RABBITMQ_DIR:-$here}"

# Every file written here holds a secret or sits next to one: nothing may be group/world readable
# while it is being written.
umask 077

tmp=
curlcfg=
if [[ -n "$api" ]]; then
    [[ "$api" =~ ^https?://[][A-Za-z0-9._:-]+/?$ ]] ||
        die "invalid --api '$api' (expected http://HOST:PORT or https://HOST:PORT of the management API)"
    api="${api%/}"
    command -v curl >/dev/null 2>&1 || die "curl not found: install curl, or run without --api on the broker host"
    credfile="${CMOVER_RABBITMQ_API_CREDENTIALS:-$dir/rabbitmq-api.conf}"
    [[ -r "$credfile" ]] ||
        die "--api needs the administrator's USER:PASSWORD in $credfile (or set CMOVER_RABBITMQ_API_CREDENTIALS)"
    # The administrator's password protects the whole broker: refuse a file others could read.
    [[ "$(stat -c %a -- "$credfile")" =~ ^[0-7]00$ ]] ||
        die "$credfile is readable by group or others: chmod 0400 $credfile"
    cred="$(head -n 1 -- "$credfile")"
    [[ "$cred" == *:* ]] || die "$credfile must hold one line ADMIN_USER:PASSWORD"
    admin="${cred%%:*}"
    # curl reads the credentials from a private config file, never from its command line (which `ps`
    # shows to every local user); inside its quotes, backslash and double quote are escaped.
    curlcfg="$(mktemp)"
    cred="${cred//\\/\\\\}"
    printf 'user = "%s"\n' "${cred//\"/\\\"}" >"$curlcfg"
    unset cred
fi
cleanup() {
    rm -f -- ${tmp:+"$tmp"} ${curlcfg:+"$curlcfg"}
}
trap cleanup EXIT

# api METHOD PATH [-]: one management API call, the request body (with -) on standard input; sets `code`
# to the HTTP status. Exit 2 with one line when the API cannot be reached or refuses the administrator.
code=
api() {
    code="$(curl -s -o /dev/null -w '%{http_code}' -K "$curlcfg" -X "$1" -H 'content-type: application/json' \
        ${3:+--data-binary @-} -- "$api$2")" ||
        die "the management API at $api cannot be reached (is the rabbitmq_management plugin enabled?)"
    case "$code" in
    401) die "the management API at $api refused the credentials in $credfile" ;;
    403) die "the user in $credfile is not an administrator of the broker at $api" ;;
    esac
}

if [[ -n "$api" ]]; then
    api GET /api/overview </dev/null
    [[ "$code" == 200 ]] || die "the management API at $api answered $code to GET /api/overview"
else
    command -v rabbitmqctl >/dev/null 2>&1 ||
        die "rabbitmqctl not found: install rabbitmq-server on this host, or use --api with the management API"
    rabbitmqctl -q status </dev/null >/dev/null 2>&1 ||
        die "RabbitMQ node is not running or not reachable (run as root; start it with: rabbitmq-server -detached)"
fi

mkdir -p -- "$dir"
passfile="$dir/rabbitmq_${username}.conf"

# Write the new password to a temporary file first: if anything fails before RabbitMQ has the new
# password, the old file (and the old password) stay valid.
tmp="$(mktemp "$dir/.rabbitmq_${username}.conf.XXXXXX")"

# 32 characters from [A-Za-z0-9], read from /dev/urandom in chunks: tr drops the other bytes, which
# keeps the choice uniform; reading fixed chunks avoids a SIGPIPE that pipefail would report.
password=
while ((${#password} < 32)); do
    password+="$(head -c 64 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9')"
done
password="${password:0:32}"
printf '%s\n' "$password" >"$tmp"
chmod 0400 -- "$tmp"

if [[ -n "$api" ]]; then
    # PUT creates the vhost (201) or leaves an existing one as it is (204); the same for the user, whose
    # password (in the request body, from a here-string, never on a command line) is replaced.
    api PUT "/api/vhosts/$username" </dev/null
    case "$code" in
    201)
        # The API gives the administrator who creates a vhost full rights on it; rabbitmqctl does not, and
        # the vhost is for cmover's user alone.
        api DELETE "/api/permissions/$username/$admin" </dev/null
        echo "vhost $username: created"
        ;;
    204) echo "vhost $username: exists" ;;
    *) die "the management API at $api answered $code to creating the vhost $username" ;;
    esac
    api GET "/api/users/$username" </dev/null
    existed="$code"
    api PUT "/api/users/$username" - <<<"{\"password\": \"$password\", \"tags\": \"\"}"
    [[ "$code" == 201 || "$code" == 204 ]] || die "the management API at $api answered $code to setting the user $username"
    if [[ "$existed" == 200 ]]; then
        echo "user $username: password changed"
    else
        echo "user $username: created"
    fi
    # Full rights (configure, write, read) on its own vhost, and no other vhost is touched.
    api PUT "/api/permissions/$username/$username" - <<<'{"configure": ".*", "write": ".*", "read": ".*"}'
    [[ "$code" == 201 || "$code" == 204 ]] ||
        die "the management API at $api answered $code to granting $username its rights on vhost $username"
else
    if rabbitmqctl --silent list_vhosts name </dev/null | grep -qxF -- "$username"; then
        echo "vhost $username: exists"
    else
        rabbitmqctl -q add_vhost "$username" </dev/null
        echo "vhost $username: created"
    fi

    # The password goes through standard input, never the command line, where `ps` would show it to
    # every local user.
    if rabbitmqctl --silent list_users </dev/null | cut -f1 | grep -qxF -- "$username"; then
        printf '%s\n' "$password" | rabbitmqctl -q change_password "$username" >/dev/null
        echo "user $username: password changed"
    else
        printf '%s\n' "$password" | rabbitmqctl -q add_user "$username" >/dev/null
        echo "user $username: created"
    fi

    # Full rights (configure, write, read) on its own vhost, and no other vhost is touched.
    rabbitmqctl -q set_permissions -p "$username" "$username" '.*' '.*' '.*' </dev/null
fi
unset password
echo "permissions on vhost $username: configure/write/read '.*'"

# rename(2) replaces even a read-only 0400 file from an earlier run, and atomically.
mv -f -- "$tmp" "$passfile"
tmp=
echo "password written to $passfile (mode 0400)"

if [[ -n "$host" ]]; then
    hostfile="$dir/rabbitmq.conf"
    tmp="$(mktemp "$dir/.rabbitmq.conf.XXXXXX")"
    printf '%s\n' "$host" >"$tmp"
    # Only the address: anyone may read it.
    chmod 0644 -- "$tmp"
    mv -f -- "$tmp" "$hostfile"
    tmp=
    echo "broker host '$host' written to $hostfile"
fi
