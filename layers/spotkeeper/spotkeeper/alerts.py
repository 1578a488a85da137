"""Alerts: one SNS topic, a readable subject, a JSON body, and attributes subscribers can filter on."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from spotkeeper.observability import logger

Severity = Literal["info", "warning", "critical"]


@dataclass(frozen=True)
class Alert:
    event: str  # what happened, e.g. "spot-interruption", "eip-moved", "fallback-on-demand"
    severity: Severity
    subject: str
    details: dict[str, Any] = field(default_factory=dict)

    def body(self, group: str) -> str:
        return json.dumps(
            {"event": self.event, "severity": self.severity, "group": group, "summary": self.subject, **self.details},
            default=str,
            sort_keys=True,
        )


class AlertPublisher:
    """Publishes to the topic and, when given ``record``, keeps a short history of what was sent (for ops'
    ``spotkeeper status``); ``record`` is best effort (StateStore.record_alert only logs a failure)."""

    def __init__(self, sns: Any, topic_arn: str, group: str, record: Callable[[Alert], None] | None = None) -> None:
        self._sns = sns
        self._topic_arn = topic_arn
        self._group = group
        self._record = record

    def send(self, alert: Alert) -> None:
        # SNS subjects are at most 100 ASCII characters with no line breaks.
        subject = f"[spotkeeper {alert.severity}] {alert.subject}".replace("\n", " ")
        subject = subject.encode("ascii", "replace").decode()[:100]
        self._sns.publish(
            TopicArn=self._topic_arn,
            Subject=subject,
            Message=alert.body(self._group),
            MessageAttributes={
                "severity": {"DataType": "String", "StringValue": alert.severity},
                "event": {"DataType": "String", "StringValue": alert.event},
            },
        )
        logger.info("alert sent", extra={"alert_event": alert.event, "severity": alert.severity, "subject": subject})
        if self._record is not None:
            self._record(alert)
