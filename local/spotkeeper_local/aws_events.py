"""AWS events for the embedded AWS and the tests, built from the samples in ``events/``.

``events/`` is the single source of event shapes: a sample is loaded by name and only the fields that
differ (a new id, the instance, the group, the time) are replaced.
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

EVENTS_DIR = Path(__file__).resolve().parents[2] / "events"


@cache
def _sample(name: str) -> dict[str, Any]:
    return json.loads((EVENTS_DIR / f"{name}.json").read_text())


def load_event(name: str) -> dict[str, Any]:
    """A sample exactly as stored in events/<name>.json."""
    return copy.deepcopy(_sample(name))


def aws_event(
    name: str,
    detail: dict[str, Any] | None = None,
    resources: list[str] | None = None,
    at: float | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """A new event of the sample's kind: fresh id and time, detail fields merged over the sample's."""
    event = load_event(name)
    event["id"] = event_id or str(uuid.uuid4())
    stamp = datetime.fromtimestamp(at, UTC) if at is not None else datetime.now(UTC)
    event["time"] = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    if detail:
        event["detail"] = {**event.get("detail", {}), **detail}
    if resources is not None:
        event["resources"] = resources
    return event


def spot_interruption(instance_id: str, at: float | None = None) -> dict[str, Any]:
    return aws_event(
        "spot-interruption-warning",
        detail={"instance-id": instance_id, "instance-action": "terminate"},
        resources=[f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}"],
        at=at,
    )


def rebalance_recommendation(instance_id: str, at: float | None = None) -> dict[str, Any]:
    return aws_event(
        "rebalance-recommendation",
        detail={"instance-id": instance_id},
        resources=[f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}"],
        at=at,
    )


def scheduled(at: float | None = None) -> dict[str, Any]:
    return aws_event("schedule", at=at)
