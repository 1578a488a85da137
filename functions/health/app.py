"""Every minute: probe TGI on the serving instance, publish its health, finish handed-over launches, give back the
capacity of a replacement whose predecessor's terminate event was lost."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from spotkeeper.deps import control_deps
from spotkeeper.events import ScheduledEvent, parse_event
from spotkeeper.handlers import rejecting_invalid_events, tag_metrics
from spotkeeper.logic.health import probe_endpoint
from spotkeeper.observability import logger, metrics, traced


@logger.inject_lambda_context(correlation_id_path="id", clear_state=True)
@metrics.log_metrics
@traced
@rejecting_invalid_events
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    parse_event(event, ScheduledEvent)
    deps = control_deps()
    tag_metrics(deps.group)
    report = probe_endpoint(deps, lambda: context.get_remaining_time_in_millis() / 1000)
    return {
        "healthy": report.healthy,
        "serving": report.serving_instance_id,
        "launches": report.launches,
        "adopted_launches": report.adopted_launches,
        "capacity_given_back": report.capacity_given_back,
        "left_serving": report.left_serving,
    }
