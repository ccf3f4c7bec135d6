"""RabbitMQ access: the only package that imports aio-pika.

Topology (declared idempotently by the API and the workers at start-up):

- ``<queue>``: a durable quorum queue of operation IDs with a delivery limit; a message
  delivered that many times without an ack is dead-lettered (at-least-once) to
- ``<queue>.dead``: a durable quorum queue whose consumer finishes those operations with an
  error.

Publishing waits for the broker's confirm, so a returned publish is durable in the queue.
``AMQP_URL`` may name several nodes of a cluster (``broker.broker_urls``); the ``Broker``
connects to one that answers and moves to another when it is lost.

``broker``: the connection, the topology and publishing; ``consumer``: consuming with a
watchdog; ``topology``: queue names and arguments.
"""

from service.adapters.rabbitmq.broker import Broker, broker_urls
from service.adapters.rabbitmq.consumer import (
    Consumer,
    ConsumerWatch,
    Delivery,
    Handler,
    consumer_is_lost,
)
from service.adapters.rabbitmq.topology import dead_letter_queue, queue_arguments

__all__ = [
    "Broker",
    "Consumer",
    "ConsumerWatch",
    "Delivery",
    "Handler",
    "broker_urls",
    "consumer_is_lost",
    "dead_letter_queue",
    "queue_arguments",
]
