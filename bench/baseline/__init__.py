"""The conventional build of the same public API, for ``python -m bench`` to compare against.

What a competent team would write with Celery, so that the service's figures have a fair
reference measured by the same client on the same machine: neither a straw man nor a tuned
special.

What it does:

- ``api``: grpc.aio with SQLAlchemy 2 (async engine on asyncpg, 10 pooled connections, as the
  service's API holds). ``Update`` checks a static bearer token, honours ``idempotency-key``
  through a nullable unique column on ``operations`` (a repeated key answers the earlier
  operation), and in one transaction locks the image, moves it READY -> UPDATING and inserts
  the operation with the changed fields as JSON. After the commit it calls
  ``apply_update.delay(operation_id)`` from the handler and answers the unfinished Operation.
  ``OperationService.Get`` reads the operation (and its image once done). Every other method
  is UNIMPLEMENTED.
- ``tasks``: a Celery app on RabbitMQ, prefork pool, ``task_acks_late=True``,
  ``worker_prefetch_multiplier=1``, ``ignore_result=True``. ``apply_update`` locks the
  operation and the image, applies the changes, sets the image READY and the operation done,
  through SQLAlchemy (sync engine on psycopg 3).
- ``models``: the declarative schema, created by ``metadata.create_all``.
- ``stack``: ``BaselineStack`` starts it all on a fresh database and queue, and removes them.

What it deliberately does not do: no transactional outbox and no publisher confirms (a
publish lost between the commit and the broker leaves the image UPDATING for good), no result
backend, no uvloop, no request validation beyond the update mask, no per-folder permissions,
no metrics or tracing, and no recovery sweep for unfinished operations. Two calls racing with
one idempotency key on one image may see the later one refused (FAILED_PRECONDITION: the image is
UPDATING) rather than answered with the first one's operation.
"""
