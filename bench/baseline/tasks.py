"""The baseline's Celery app and its one task, ``apply_update``.

Run the worker with ``python -m celery -A bench.baseline.tasks worker -Q $BASELINE_QUEUE ...``.
The worker applies an Update through SQLAlchemy (sync engine on psycopg 3).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from celery import Celery
from celery.signals import worker_ready
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from bench.baseline.models import Image, ImageStatus, Operation, utcnow

log = logging.getLogger(__name__)

QUEUE = os.environ.get("BASELINE_QUEUE", "baseline-operations")
TASK_NAME = "bench.baseline.apply_update"

app = Celery("bench.baseline", broker=os.environ.get("BASELINE_AMQP_URL", "amqp://"))
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_default_queue=QUEUE,
    task_routes={TASK_NAME: {"queue": QUEUE}},
    broker_connection_retry_on_startup=True,
)


def sqlalchemy_url(url: str, driver: str) -> str:
    """``postgresql://...`` as SQLAlchemy names it with ``driver`` (psycopg, asyncpg)."""
    scheme, rest = url.split("://", 1)
    return f"postgresql+{driver}://{rest}" if scheme in ("postgresql", "postgres") else url


@functools.cache
def engine() -> Engine:
    """The pool of this process, made on first use: each prefork child opens its own."""
    return create_engine(sqlalchemy_url(os.environ["BASELINE_DATABASE_URL"], "psycopg"))


def apply_request(image: Image, request: dict[str, Any]) -> None:
    if "name" in request:
        image.name = request["name"]
    if "description" in request:
        image.description = request["description"]
    if "labels" in request:
        image.labels = dict(request["labels"])


@app.task(
    name=TASK_NAME,
    ignore_result=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=5,
)
def apply_update(operation_id: str) -> None:
    """Apply the operation's changes to its image; the image is READY again, the operation done."""
    with Session(engine()) as session, session.begin():
        operation = session.scalars(
            select(Operation).where(Operation.id == operation_id).with_for_update()
        ).one_or_none()
        if operation is None:
            log.warning("operation %s not found", operation_id)
            return
        if operation.done:  # a redelivery after the commit
            return
        image = session.scalars(
            select(Image).where(Image.id == operation.image_id).with_for_update()
        ).one()
        apply_request(image, operation.request)
        image.status = ImageStatus.READY
        operation.done = True
        operation.modified_at = utcnow()


@worker_ready.connect
def announce_ready(**_: Any) -> None:
    # Logged at WARNING so that it shows at the worker's usual `-l warning`.
    log.warning("baseline worker ready")
