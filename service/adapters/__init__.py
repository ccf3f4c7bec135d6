"""Adapters: the only modules that talk to PostgreSQL and RabbitMQ."""
