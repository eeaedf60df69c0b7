"""The process's site settings: those a command loaded and installed, else ``config.py`` read on first use.

Kept apart from the Celery app (:mod:`cmover.app` reads its broker from here) so that a command that loads
its settings imports no Celery: an embedded pass that its own process completes needs none.
"""

from __future__ import annotations

import os
import threading

from cmover.core.settings import Settings, load_settings

_settings: Settings | None = None
_lock = threading.Lock()


def install(s: Settings) -> None:
    """Use ``s`` (e.g. loaded from ``--config``) as this process's site settings, broker URL included."""
    global _settings
    with _lock:
        _settings = s


def get() -> Settings:
    """This process's site settings: those installed, else loaded (config.py) on first use."""
    global _settings
    with _lock:
        if _settings is None:
            _settings = load_settings()
        return _settings


def _after_fork_in_child() -> None:
    # A pool child must not inherit a lock another thread of its parent held at fork time.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
