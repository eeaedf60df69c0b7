"""Clean-pass records of the node that plans passes: give a new copy pass the proof of the last clean one,
record a pass that completed clean (see :mod:`cmover.core.cleanpass` for the rule).

Both run where the pass is planned and waited for (``cmover copy``, ``cmover sync``, ``cmover start
--wait``), against that node's STATE_DIR; workers need no state: the proof travels in the pass spec.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

from cmover.core import cleanpass, privileges
from cmover.core.passes import PassKind, PassSpec
from cmover.core.settings import Settings

log = logging.getLogger(__name__)


def attach(spec: PassSpec, settings: Settings, *, full_compare: bool = False) -> PassSpec:
    """``spec`` with the proof of the last clean pass over its tree that had the same fingerprint (none with
    ``full_compare``, for a pass that is not a copy, or when there is no such record)."""
    if spec.kind is not PassKind.COPY or full_compare:
        return spec
    fp = cleanpass.fingerprint(spec, privileges.current())
    rec = cleanpass.Store(settings.state_path()).last(spec.src_root, spec.dst_root, spec.start, fp)
    if rec is None:
        return spec
    proof_ns, proof_end_ns = cleanpass.cut(rec, int(settings.clock_skew * 1e9))
    return spec._replace(proof_ns=proof_ns, proof_end_ns=proof_end_ns, proof_fp=fp)


def record(settings: Settings, spec: PassSpec, state: str, failure_count: int, totals: Mapping[str, int],
           end_ns: int | None = None) -> bool:
    """Record ``spec`` as the last clean pass of its tree when :func:`cmover.core.cleanpass.may_record` says
    it may be; True when recorded. A state directory that cannot be written is a warning (the next pass
    compares in full), never a failure of the pass."""
    if not cleanpass.may_record(spec, state, failure_count, totals):
        return False
    rec = cleanpass.CleanPass(spec.src_root, spec.dst_root, spec.start, spec.planned_ns,
                              end_ns if end_ns is not None else time.time_ns(),
                              cleanpass.fingerprint(spec, privileges.current()), spec.run_id)
    try:
        cleanpass.Store(settings.state_path()).record(rec)
    except OSError as exc:
        log.warning("cannot record the clean pass in STATE_DIR %s (%s); the next pass compares every entry in full",
                    settings.state_path(), exc.strerror or exc)
        return False
    log.debug("recorded clean pass %s of %s", spec.run_id, os.fsdecode(spec.src_root))
    return True
