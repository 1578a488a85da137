"""Spot capacity: fall back to On-Demand when Spot runs dry, forward to Spot when it returns; alarm alerts."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from spotkeeper.deps import capacity_deps
from spotkeeper.events import parse_event
from spotkeeper.handlers import rejecting_invalid_events, tag_metrics
from spotkeeper.logic.capacity import CapacityEvent, react_to_capacity_event
from spotkeeper.observability import logger, metrics, traced


@logger.inject_lambda_context(correlation_id_path="id", clear_state=True)
@metrics.log_metrics
@traced
@rejecting_invalid_events
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    trigger = parse_event(event, CapacityEvent)
    deps = capacity_deps()
    tag_metrics(deps.group)
    return {"outcome": react_to_capacity_event(trigger, deps)}
