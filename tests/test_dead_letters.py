"""A poisoned event ends in the dead-letter queue with its original payload intact, after the retries the
template configures, and the DLQ alarm watches that queue."""

from __future__ import annotations

import json

import pytest
from cfn import load_template

from spotkeeper_local.aws_events import load_event
from spotkeeper_local.lambda_runtime import invoke_async

FUNCTIONS = {"interruption": "InterruptionFunction", "lifecycle": "LifecycleFunction"}


def async_config(logical_id: str) -> dict:
    return load_template()["Resources"][logical_id]["Properties"]["EventInvokeConfig"]


@pytest.mark.parametrize(
    ("function", "sample"), [("interruption", "malformed-spot-interruption"), ("lifecycle", "malformed-lifecycle")]
)
def test_poisoned_event_lands_in_the_dlq_with_its_payload(stack, function, sample, monkeypatch, deps):
    # Given the function's async invocation config from the template: retries, then OnFailure to the DLQ
    config = async_config(FUNCTIONS[function])
    destination = config["DestinationConfig"]["OnFailure"]
    assert destination["Type"] == "SQS"
    assert destination["Destination"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    sqs = stack.session.client("sqs")
    dlq = sqs.create_queue(QueueName="spotkeeper-dlq")["QueueUrl"]
    event = load_event(sample)
    attempts = []

    def to_dlq(record):
        sqs.send_message(QueueUrl=dlq, MessageBody=json.dumps(record))

    # When the event is invoked asynchronously and keeps failing
    from spotkeeper_local import lambda_runtime

    real_invoke = lambda_runtime.invoke

    def counting_invoke(*args, **kwargs):
        attempts.append(1)
        return real_invoke(*args, **kwargs)

    monkeypatch.setattr(lambda_runtime, "invoke", counting_invoke)
    result = invoke_async(function, event, deps, on_failure=to_dlq, retries=config["MaximumRetryAttempts"])
    # Then it was tried 1 + MaximumRetryAttempts times and its record is in the DLQ, payload byte-for-byte
    assert result is None
    assert len(attempts) == 1 + config["MaximumRetryAttempts"]
    [message] = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10)["Messages"]
    record = json.loads(message["Body"])
    assert record["requestPayload"] == event
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["responsePayload"]["errorType"] == "InvalidEvent"
    assert event["id"] in record["responsePayload"]["errorMessage"]
    # ...and nothing else happened
    assert stack.alerts() == []
    assert stack.group_description()["DesiredCapacity"] == 1


def test_the_dlq_alarm_watches_the_dead_letter_queue():
    resources = load_template()["Resources"]
    alarms = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
        and r["Properties"].get("Namespace") == "AWS/SQS"
        and r["Properties"].get("MetricName") == "ApproximateNumberOfMessagesVisible"
    ]
    assert alarms, "no alarm on the DLQ depth"
    dimensions = alarms[0]["Dimensions"]
    assert {"Name": "QueueName", "Value": {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}} in dimensions
    assert alarms[0]["Threshold"] == 0 and alarms[0]["ComparisonOperator"] == "GreaterThanThreshold"
