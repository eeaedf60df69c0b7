"""Primitives: settings, the pass spec and its options, the metadata record, paths and confinement, errors
and the records of a run's lists (failures, deletions), counter names, the log line format (text or JSON),
and the few system calls every layer shares (fsio, xattrs). Imports nothing else of cmover."""
