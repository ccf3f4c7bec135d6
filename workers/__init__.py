"""The worker pool: executes operations, relays the outbox, sweeps abandoned operations."""
