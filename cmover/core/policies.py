"""Names of the Lustre layout policies (what ``LUSTRE_LAYOUT`` and ``--layout`` accept; what each one
does is :mod:`cmover.lustre.layout`'s business) and of the HSM policies (``HSM_POLICY``, ``--hsm``)."""

from __future__ import annotations

POLICIES = ("keep", "classic", "target-default")


#: What HSM_POLICY and ``--hsm`` accept: what a copy pass does with HSM-released files of a Lustre source
#: (see "Migrating an HSM filesystem" in README.md and :mod:`cmover.engine.hsmcopy`).
HSM_POLICIES = ("import", "recall", "skip")


def check_hsm_policy(policy: str) -> str:
    """``policy`` if it is an HSM policy; ValueError naming the choices otherwise."""
    if policy not in HSM_POLICIES:
        raise ValueError(f"unknown HSM policy {policy!r}; choose one of {', '.join(HSM_POLICIES)}")
    return policy


def check_policy(policy: str) -> str:
    """``policy`` if known; ValueError naming the choices otherwise."""
    if policy not in POLICIES:
        raise ValueError(f"unknown layout policy {policy!r}; choose one of {', '.join(POLICIES)}")
    return policy

