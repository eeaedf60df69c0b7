#!/usr/bin/env bash
# Workers of the verify pass on this host: scripts/run_verify.sh [start|stop|status|try_f|try_d] [CELERY ARGS...]
# See scripts/workers.sh for the subcommands and environment variables.
set -euo pipefail
exec "$(dirname "$0")/workers.sh" verify "$@"
