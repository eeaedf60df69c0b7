"""Distributed state of a run: the completion ledger, counters, error and deletion lists and pause
records, kept in memcached and on the broker (or in the embedded hub through the same protocols); every
memcached key is spelled in :mod:`cmover.state.keys`."""
