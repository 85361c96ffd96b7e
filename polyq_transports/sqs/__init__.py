"""Amazon SQS transport (boto3), for ``sqs://`` URLs.

Modules: :mod:`.transport` (the contract methods and the hot path), :mod:`.wire`
(the message envelope and SQS's limits), :mod:`.queues` (names, creation, URLs,
priority bands), :mod:`.delays` (hops beyond 15 minutes, FIFO delay queues),
:mod:`.dead_letters`, :mod:`.broadcast`. The boto3 client set-up it shares with the
DynamoDB result backend lives in :mod:`polyq_clients.aws`. Design:
``docs/design/sqs.md``.
"""

from polyq_transports.sqs.transport import SQSTransport

__all__ = ["SQSTransport"]
