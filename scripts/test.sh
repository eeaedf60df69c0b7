#!/usr/bin/env bash
# The project's test command (also what CI runs through .ci/run):
#     scripts/test.sh [PYTEST ARGS...]
# Brings up what the tests need (system tools, RabbitMQ, memcached, carbon, Prometheus, graphite-web, .venv),
# then lint, type check, import contracts and pytest. Arguments go to pytest unchanged, e.g. `scripts/test.sh -x -k walk`.
set -euo pipefail

# Work from the repository root whatever the caller's cwd: every path below is relative to it.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/services.sh
source scripts/services.sh

section() {
    printf '\n=== %s ===\n' "$*"
}

section "services"
ensure_test_tools
ensure_rabbitmq
ensure_rabbitmq_api
ensure_memcached
ensure_carbon
ensure_prometheus
ensure_graphite_web
ensure_venv

section "lustre stand-in"
# The C stand-in of liblustreapi the Lustre tests load (Lustre itself is absent here); the test
# fixture rebuilds it too when missing, so a plain `pytest` works as well.
bash tests/lustre_standin/build.sh tests/_build/lustre
echo "built tests/_build/lustre/liblustreapi.so.1 (and legacy/)"

section "ruff check"
# Only the paths that exist: ruff fails on a missing path, and a bare `*.py` that matches nothing
# would be passed on literally.
shopt -s nullglob
lint_paths=()
for p in cmover tests bench dashboards *.py; do
    if [[ -e "$p" ]]; then
        lint_paths+=("$p")
    fi
done
shopt -u nullglob
.venv/bin/ruff check "${lint_paths[@]}"

section "mypy"
.venv/bin/mypy cmover

section "import contracts"
# The package layers, the platform layer's imports and no import cycles (pyproject.toml [tool.importlinter]).
.venv/bin/lint-imports

section "pytest"
rc=0
.venv/bin/python -m pytest "$@" || rc=$?
if ((rc == 5)); then
    # pytest's 5 means "no tests collected": a filter or import mistake, never a pass.
    echo "test.sh: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
