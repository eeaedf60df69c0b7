"""The embedded mode: passes run on one machine with no server to install (the run's hub, the pool of
processes that run its tasks, and the session that runs passes in one hub and one pool)."""
