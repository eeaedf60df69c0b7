"""The embedded mode: passes run on one machine with no server to install (the run's hub and its
kombu transport, and the session that runs passes in one hub and one worker)."""
