"""What every handler does around its one call: parse strictly, log rejects with the event id, tag metrics."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from spotkeeper.events import InvalidEvent
from spotkeeper.observability import logger, metrics


def rejecting_invalid_events[F: Callable[..., Any]](handler: F) -> F:
    """Log a malformed event with its id and re-raise, so Lambda retries it and it ends in the DLQ.

    Nothing with a side effect runs before the event is parsed, so a rejected event changes nothing.
    """

    @wraps(handler)
    def wrapper(event: Any, context: Any) -> Any:
        try:
            return handler(event, context)
        except InvalidEvent as error:
            # The message itself names the event and the reason, not only the structured keys: a reader of the
            # plain text (and pytest's caplog) sees them too.
            logger.error(
                f"rejected malformed event {error.event_id or '<no id>'}: {error.reason}",
                extra={"event_id": error.event_id, "reason": error.reason, "detail_type": _detail_type(event)},
            )
            raise

    return wrapper  # type: ignore[return-value]


def _detail_type(event: Any) -> str | None:
    return event.get("detail-type") if isinstance(event, dict) else None


def tag_metrics(group: str) -> None:
    metrics.add_dimension(name="AutoScalingGroupName", value=group)
