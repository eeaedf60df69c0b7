"""The platform layer's change journals: what changed on a source since a given instant, by name.

A journal replaces the walk of a final pass only when it provably holds every change since the start
of the last pass of that kind that completed with no failure (:mod:`cmover.journal.base` says what a
reading promises). Backends: :mod:`cmover.journal.local` (Linux fanotify on a local filesystem, recorded by
``cmover watch`` with :mod:`cmover.journal.watch` into the durable store of :mod:`cmover.journal.store`;
the kernel binding is :mod:`cmover.journal.fanotify`). The Lustre changelog backend is in the Lustre platform
package (:mod:`cmover.lustre.chjournal`); the normalized changes both build are :mod:`cmover.core.changes`.
Imports only :mod:`cmover.core`; no Celery.
"""
