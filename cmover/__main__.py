"""``python -m cmover`` is the ``cmover`` command."""

from cmover.cli import main

raise SystemExit(main())
