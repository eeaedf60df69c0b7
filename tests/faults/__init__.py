"""Fault-injection tests: real workers, a private RabbitMQ node and a private memcached."""
