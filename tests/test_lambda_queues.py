"""The drill's stand-in for Lambda's asynchronous queue under a concurrency ceiling (``--serial-delivery``).

AWS: reserved concurrency caps each function on its own; an asynchronous event that finds its function's
executions busy is throttled, goes back to the queue and is tried again "1 second after the first attempt",
the interval growing exponentially "to a maximum of 5 minutes", until it is older than the function's
MaximumEventAgeInSeconds, when it is dropped to the OnFailure destination
(https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html).
"""

from __future__ import annotations

from cfn import load_template

from spotkeeper_local.embedded_aws import load_sam_template, local_template
from spotkeeper_local.lambda_runtime import AsyncQueues, expiry_record

T0 = 1_000.0


def _event(n: int) -> dict:
    return {"id": f"event-{n}", "detail-type": "Scheduled Event"}


def test_without_a_ceiling_events_run_in_arrival_order():
    queues = AsyncQueues()
    for n, function in enumerate(("lifecycle", "lifecycle", "health")):
        queues.put(function, _event(n), T0)
    order = []
    while (queued := queues.next(T0)[0]) is not None:
        queues.started(queued.function)  # never ended: no ceiling, nothing waits
        order.append(queued.event["id"])
    assert order == ["event-0", "event-1", "event-2"]


def test_a_busy_function_throttles_only_its_own_events_with_lambdas_backoff():
    queues = AsyncQueues()
    queues.started("lifecycle")  # its one execution is waiting on a launch hook
    queues.put("lifecycle", _event(1), T0)
    queues.put("health", _event(2), T0)
    # Given a ceiling of one execution per function, the other function's event runs at once
    queued, expired = queues.next(T0, limit=1)
    assert queued is not None and queued.function == "health" and not expired
    # ...while the busy function's event is tried again 1 s later, then 2, 4, ... capped at 5 minutes
    [waiting] = queues.queued
    tries = [waiting.next_try - T0]
    now = T0
    while len(tries) < 11:
        now = waiting.next_try
        assert queues.next(now, limit=1) == (None, [])
        tries.append(waiting.next_try - T0)
    assert tries == [1, 3, 7, 15, 31, 63, 127, 255, 511, 811, 1111]
    # When the execution frees, the event runs at its next try, not before
    queues.ended("lifecycle")
    assert queues.next(now + 1, limit=1) == (None, [])
    queued, _ = queues.next(waiting.next_try, limit=1)
    assert queued is waiting and waiting.throttles == 11


def test_an_event_older_than_its_functions_maximum_age_is_dropped_for_the_dlq():
    queues = AsyncQueues({"health": 300.0})
    queues.started("health")
    queues.put("health", _event(1), T0)
    queues.put("capacity", _event(2), T0)  # Lambda's default maximum age: 6 hours
    queues.started("capacity")
    assert queues.next(T0 + 300, limit=1) == (None, [])
    queued, expired = queues.next(T0 + 301, limit=1)
    assert queued is None and [e.event["id"] for e in expired] == ["event-1"]
    assert [q.event["id"] for q in queues.queued] == ["event-2"]
    record = expiry_record("health", expired[0].event, expired[0].throttles + 1, T0 + 301)
    assert record["requestContext"]["condition"] == "EventAgeExceeded"
    assert record["requestPayload"] == _event(1) and "responsePayload" not in record


def test_the_drill_reads_each_functions_maximum_event_age_from_the_template():
    resources = load_template()["Resources"]
    functions = local_template(load_sam_template()).functions
    for logical_id, spec in functions.items():
        config = resources[logical_id]["Properties"].get("EventInvokeConfig", {})
        assert spec.maximum_event_age == config.get("MaximumEventAgeInSeconds", 21600), logical_id
    assert functions["HealthFunction"].maximum_event_age == 300
