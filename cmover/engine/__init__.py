"""The engine: plain Python, no Celery, no run state. One walker (walker) and the pass engines built on it
(copypass, deletepass, dirtimepass); what a task hands on (jobs: child jobs, failures, transient retries)
and needs from the run (claims); the pure decisions (filters, compare); acting on one entry (copier,
metadata, chunks, hardlinks); the pass planner with its preflight checks and the delete pass's safety
checks (planner, safety)."""
