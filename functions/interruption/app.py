"""Spot interruption warnings and rebalance recommendations for instances of the group."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from spotkeeper.deps import control_deps
from spotkeeper.events import InstanceAtRiskEvent, parse_event
from spotkeeper.handlers import rejecting_invalid_events, tag_metrics
from spotkeeper.logic.interruption import react_to_interruption
from spotkeeper.observability import logger, metrics, traced


@logger.inject_lambda_context(correlation_id_path="id", clear_state=True)
@metrics.log_metrics
@traced
@rejecting_invalid_events
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    at_risk = parse_event(event, InstanceAtRiskEvent)
    deps = control_deps()
    tag_metrics(deps.group)
    return {"outcome": react_to_interruption(at_risk, deps)}
