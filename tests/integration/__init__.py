"""Integration tests: real RabbitMQ, memcached and `celery worker` processes (see conftest.py)."""
