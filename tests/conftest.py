"""Shared fixtures: fake AWS credentials, moto, and an endpoint stack (group, EIP, table, topic) in it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from spotkeeper.events import LifecycleHook

REGION = "us-east-1"
GROUP = "spotkeeper-tgi"
MODEL_ID = "meta-llama/Llama-3.1-8B-Instruct"

os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "Spotkeeper",
        "POWERTOOLS_SERVICE_NAME": "spotkeeper",
        "POWERTOOLS_DEV": "false",
    }
)


@dataclass
class Stack:
    """The AWS side of one endpoint, as the template creates it, inside moto."""

    session: Any
    group: str
    eip_allocation_id: str
    table_name: str
    topic_arn: str
    alerts_queue_url: str
    subnet_id: str
    launch_template_id: str

    def env(self, **overrides: str) -> dict[str, str]:
        values = {
            "GROUP_NAME": self.group,
            "EIP_ALLOCATION_ID": self.eip_allocation_id,
            "STATE_TABLE_NAME": self.table_name,
            "ALERT_TOPIC_ARN": self.topic_arn,
            "MODEL_ID": MODEL_ID,
            "TGI_PORT": "8080",
            "LAUNCH_DEADLINE_SECONDS": "900",
            "READY_POLL_SECONDS": "5",
            "DRAIN_SECONDS": "30",
            "UNHEALTHY_AFTER_FAILURES": "3",
        }
        values.update(overrides)
        return values

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert published so far (read from an SQS subscription of the topic), oldest first."""
        sqs = self.session.client("sqs")
        received: list[dict[str, Any]] = []
        while True:
            batch = sqs.receive_message(QueueUrl=self.alerts_queue_url, MaxNumberOfMessages=10).get("Messages", [])
            if not batch:
                break
            for message in batch:
                envelope = json.loads(message["Body"])
                received.append(
                    {
                        "subject": envelope.get("Subject"),
                        "body": json.loads(envelope["Message"]),
                        "attributes": {k: v["Value"] for k, v in envelope.get("MessageAttributes", {}).items()},
                    }
                )
                sqs.delete_message(QueueUrl=self.alerts_queue_url, ReceiptHandle=message["ReceiptHandle"])
        return received

    def group_description(self) -> dict[str, Any]:
        return self.session.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[self.group])[
            "AutoScalingGroups"
        ][0]

    def eip_holder(self) -> str | None:
        address = self.session.client("ec2").describe_addresses(AllocationIds=[self.eip_allocation_id])["Addresses"][0]
        return address.get("InstanceId") or None


def create_state_table(session: Any, name: str) -> Any:
    """The state table with the template's key schema (pk/sk); returns the boto3 Table resource."""
    session.client("dynamodb").create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    return session.resource("dynamodb").Table(name)


def create_stack(session: Any, group: str = GROUP, capacity_rebalance: bool = True) -> Stack:
    ec2 = session.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
    template = ec2.create_launch_template(
        LaunchTemplateName=f"{group}-lt",
        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "g5.2xlarge"},
    )["LaunchTemplate"]["LaunchTemplateId"]
    autoscaling = session.client("autoscaling")
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=group,
        MinSize=1,
        MaxSize=2,
        DesiredCapacity=1,
        VPCZoneIdentifier=subnet,
        CapacityRebalance=capacity_rebalance,
        MixedInstancesPolicy={
            "LaunchTemplate": {
                "LaunchTemplateSpecification": {"LaunchTemplateId": template, "Version": "$Latest"},
                "Overrides": [{"InstanceType": "g5.2xlarge"}, {"InstanceType": "g6.2xlarge"}],
            },
            "InstancesDistribution": {
                "OnDemandBaseCapacity": 0,
                "OnDemandPercentageAboveBaseCapacity": 0,
                "SpotAllocationStrategy": "price-capacity-optimized",
            },
        },
    )
    for hook in LifecycleHook:
        autoscaling.put_lifecycle_hook(
            LifecycleHookName=hook,
            AutoScalingGroupName=group,
            LifecycleTransition=hook.transition,
            HeartbeatTimeout=900,
        )
    allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
    table_name = "spotkeeper-state"
    create_state_table(session, table_name)
    sns = session.client("sns")
    topic = sns.create_topic(Name="spotkeeper-alerts")["TopicArn"]
    sqs = session.client("sqs")
    queue_url = sqs.create_queue(QueueName="alerts-inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    return Stack(session, group, allocation, table_name, topic, queue_url, subnet, template)


@pytest.fixture
def aws() -> Iterator[Any]:
    with mock_aws():
        yield boto3.session.Session(region_name=REGION)


@pytest.fixture
def stack(aws: Any) -> Stack:
    return create_stack(aws)


@pytest.fixture
def deps(stack: Stack) -> Any:
    """The control functions' deps (interruption, lifecycle, health) wired to the stack, on a simulated clock."""
    # Imported here, not at the top: spotkeeper reads the Powertools settings above when it is first imported.
    from control import control_deps_for

    from spotkeeper_local.sim_clock import SimClock

    return control_deps_for(stack, clock=SimClock())


@pytest.fixture
def capacity(stack: Stack) -> Any:
    """The capacity function wired to the stack, with the Spot market and Auto Scaling group stand-ins."""
    # Imported here, not at the top: spotkeeper reads the Powertools settings above when it is first imported.
    from capacity_harness import Capacity

    from spotkeeper_local.sim_clock import SimClock

    return Capacity(stack, SimClock())


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from counts import COUNTS

    if COUNTS:
        terminalreporter.section("spotkeeper hardening counts")
        for name, value in sorted(COUNTS.items()):
            terminalreporter.write_line(f"{name}: {value}")
