"""Launch and terminate lifecycle hooks of the group."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from spotkeeper.deps import control_deps
from spotkeeper.events import LaunchLifecycleAction, LifecycleEvent, parse_event
from spotkeeper.handlers import rejecting_invalid_events, tag_metrics
from spotkeeper.idempotency import once_per_event
from spotkeeper.logic.lifecycle import on_instance_launching, on_instance_terminating
from spotkeeper.observability import logger, metrics, traced


@logger.inject_lambda_context(correlation_id_path="id", clear_state=True)
@metrics.log_metrics
@traced
@rejecting_invalid_events
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    action = parse_event(event, LifecycleEvent)
    deps = control_deps()
    tag_metrics(deps.group)
    if action.detail.group_name != deps.group:
        logger.warning("lifecycle action for another group", extra={"group": action.detail.group_name})
        return {"outcome": "ignored"}

    def react() -> str:
        if isinstance(action, LaunchLifecycleAction):
            return on_instance_launching(action, deps, lambda: context.get_remaining_time_in_millis() / 1000)
        return on_instance_terminating(action, deps)

    # A redelivery while the first delivery is still waiting for TGI must not start a second wait.
    return {"outcome": once_per_event(deps, event["id"], react, context)}
