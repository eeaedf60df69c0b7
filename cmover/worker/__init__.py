"""What runs inside a Celery worker process: the task wrapper (the one place tasks handle errors),
the per-process worker context and the worker's signal hooks and log files."""
