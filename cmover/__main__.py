"""``python -m cmover`` is the ``cmover`` command."""

from cmover.cli.main import main

raise SystemExit(main())
