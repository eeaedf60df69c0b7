#!/usr/bin/env bash
# Workers of the delete pass on this host: scripts/run_del.sh [start|stop|status|try_f|try_d] [CELERY ARGS...]
# See scripts/workers.sh for the subcommands and environment variables.
set -euo pipefail
exec "$(dirname "$0")/workers.sh" delete "$@"
