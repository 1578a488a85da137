"""Powertools idempotency on the state table, keyed on the EventBridge event id.

Conditional writes in the state store already make every reaction safe to repeat; this adds the cheap
exact-duplicate check for reactions that wait (a launch hook polls TGI for minutes), so a redelivery does
not start a second wait while the first is still running.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError

from spotkeeper.observability import logger


@cache
def _persistence(table_name: str, session: Any) -> DynamoDBPersistenceLayer:
    return DynamoDBPersistenceLayer(table_name=table_name, key_attr="pk", sort_key_attr="sk", boto3_session=session)


def once_per_event(deps: Any, event_id: str, react: Callable[[], str], lambda_context: Any) -> str:
    persistence = _persistence(deps.env.state_table_name, deps.clients.boto3_session())
    config = IdempotencyConfig(expires_after_seconds=24 * 3600)
    # An invocation that dies mid-wait releases its claim when its own time is up, not after the record's TTL.
    config.register_lambda_context(lambda_context)

    @idempotent_function(data_keyword_argument="event_id", persistence_store=persistence, config=config)
    def reaction(event_id: str) -> str:
        return react()

    try:
        return reaction(event_id=event_id)
    except IdempotencyAlreadyInProgressError:
        logger.info("same event is being handled by another invocation", extra={"event_id": event_id})
        return "in-progress-elsewhere"
