"""Run a script of the project directory (``cmover_control.py``, ``send_graphite.py``) with the project's Python.

The README has operators type ``python cmover_control.py start``: ``python`` is whatever the shell finds,
often the system's, without cmover's dependencies. :func:`use_project_python` re-executes the script with
the project's ``.venv/bin/python`` in that case, or ends with one line naming the command that creates
that environment. It runs before anything else is imported, under any Python 3: standard library only,
no syntax newer than Python 3.6, no side effect when the running interpreter is fit.
"""

import importlib.util
import os
import sys

#: What cmover imports at run time (the dependencies of pyproject.toml, by module name).
NEEDED = ("celery", "kombu", "amqp", "pymemcache", "graphyte", "concurrent_log_handler", "rich", "prometheus_client")
#: The oldest Python cmover runs on (pyproject.toml: requires-python).
MIN_PYTHON = (3, 11)
#: The command that creates the project's environment (run in the project directory).
ENSURE_VENV = "bash scripts/services.sh ensure_runtime_venv"


def missing() -> list:
    """Why this interpreter cannot run cmover: a too old version and the modules it lacks (empty: it can)."""
    why = [] if sys.version_info >= MIN_PYTHON else [f"Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]}"]
    return why + [name for name in NEEDED if importlib.util.find_spec(name) is None]


def use_project_python(script: str) -> None:
    """Return if this interpreter can run cmover; else re-execute ``script`` (with the same arguments)
    under ``.venv/bin/python`` beside it, or exit 2 with one line on stderr when there is none (or it is
    the running one and is incomplete)."""
    lacking = missing()
    if not lacking:
        return
    project = os.path.dirname(os.path.abspath(script))
    venv = os.path.join(project, ".venv")
    python = os.path.join(venv, "bin", "python")
    in_venv = os.path.realpath(sys.prefix) == os.path.realpath(venv)
    if os.access(python, os.X_OK) and not in_venv:
        os.execv(python, [python, os.path.abspath(script)] + sys.argv[1:])
    name = os.path.basename(script)
    where = f"its environment {venv} lacks them" if in_venv else f"{python} does not exist"
    sys.stderr.write(f"{name}: {sys.executable} (Python {sys.version.split()[0]}) lacks {', '.join(lacking)} "
                     f"and {where}; run `{ENSURE_VENV}` in {project}, then run this command again\n")
    sys.exit(2)
