"""The queues: the operations' quorum queue and its dead-letter queue."""

from __future__ import annotations

from typing import Any


def dead_letter_queue(queue_name: str) -> str:
    return f"{queue_name}.dead"


def queue_arguments(queue_name: str, delivery_limit: int) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_queue(queue_name),
        "x-dead-letter-strategy": "at-least-once",
        # at-least-once dead-lettering requires reject-publish overflow
        "x-overflow": "reject-publish",
    }


def dead_letter_queue_arguments() -> dict[str, Any]:
    # No delivery limit and no dead-letter exchange of its own: a message here stays until
    # the workers end its operation.
    return {"x-queue-type": "quorum"}
