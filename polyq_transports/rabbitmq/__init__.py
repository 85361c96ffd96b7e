"""``amqp://``: RabbitMQ through pika, with publisher confirms and connection-bound leases.

The package's parts, bottom up: ``headers`` (polyq's AMQP headers), ``fastpath`` (the
only code using pika internals), ``connection`` (the I/O thread, reconnection),
``topology`` (queues, delay levels), ``publish`` (confirms), ``consume`` (prefetch,
delivery counting, acks), ``dead_letters``, ``broadcast``, and ``transport`` (the
contract). The design: docs/design/rabbitmq.md.
"""

from .transport import RabbitMQTransport

__all__ = ["RabbitMQTransport"]
