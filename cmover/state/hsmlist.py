"""Where a copy run's HSM list is kept (see :mod:`cmover.core.hsmrecord`), durably, per run.

* Distributed: like the error list, persistent JSON messages on the durable queue of list
  ``<run>.hsm`` (:class:`BrokerHsm`), read without being consumed.
* Embedded: a JSON-lines file ``hsm-<run>.jsonl`` in LOG_DIR (:class:`HsmFile`), appended to by every
  worker process with one ``write`` per task (``O_APPEND``) and synced, so it survives the session.

:func:`rebind_lines` turns a list into the lines ``lhsmtool_posix --rebind <file> <mnt>`` reads.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Protocol

from cmover.core import statefile
from cmover.core.hsmrecord import HsmRecord, hsm_list
from cmover.state.errorlist import BrokerErrors, ErrorSink

_RUN = re.compile(r"^[A-Za-z0-9_.-]+$")


class HsmSink(Protocol):
    def record(self, run_id: str, records: Sequence[HsmRecord]) -> None:
        """Add ``records`` to run ``run_id``'s list; raises when they could not be kept."""
        ...

    def read(self, run_id: str) -> list[HsmRecord]:
        """Every record of run ``run_id``'s list, oldest first (empty when there is none)."""
        ...


class BrokerHsm:
    """The list kept with the error lists: on the broker (:class:`BrokerErrors`), or wherever the given
    error sink keeps them (the tests' in-memory lists)."""

    def __init__(self, errors: BrokerErrors | ErrorSink) -> None:
        self.errors = errors

    def record(self, run_id: str, records: Sequence[HsmRecord]) -> None:
        self.errors.record(hsm_list(run_id), records)

    def read(self, run_id: str) -> list[HsmRecord]:
        return self.errors.read_hsm(run_id)  # type: ignore[union-attr]


class HsmFile:
    """The list as a JSON-lines file per run in ``directory`` (the embedded mode's LOG_DIR)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def path(self, run_id: str) -> str:
        if not _RUN.match(run_id):
            raise ValueError(f"not a run id: {run_id!r}")
        return os.path.join(self.directory, f"hsm-{run_id}.jsonl")

    def record(self, run_id: str, records: Sequence[HsmRecord]) -> None:
        data = "".join(json.dumps(r.as_dict(), separators=(",", ":")) + "\n" for r in records).encode()
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.path(run_id), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            statefile.write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, run_id: str) -> list[HsmRecord]:
        try:
            with open(self.path(run_id)) as f:
                text = f.read()
        except FileNotFoundError:
            return []
        return [HsmRecord.from_dict(json.loads(line)) for line in text.splitlines() if line.strip()]

    def runs(self) -> list[str]:
        """Run ids with a list here, newest first."""
        names = statefile.names(self.directory, "hsm-", ".jsonl")
        names.sort(key=lambda n: os.stat(os.path.join(self.directory, n)).st_mtime, reverse=True)
        return [n[len("hsm-"):-len(".jsonl")] for n in names]


def rebind_lines(records: Iterable[HsmRecord]) -> list[str]:
    """``<old FID> <new FID>`` per file to rebind, in list order; a file recorded again (a later task, a
    stub replaced) keeps its last target FID, in the place of its first record."""
    pairs: dict[str, str] = {}
    for r in records:
        if r.rebinds:
            pairs[r.src_fid] = r.dst_fid
    return [f"{old} {new}" for old, new in pairs.items()]
