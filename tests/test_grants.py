"""Least privilege, checked against what the code does: each function's role grants exactly the AWS actions the
function calls, plus the few that AWS checks on its behalf without the function calling them.

The scenarios below run every function's paths on moto (through the tests' harnesses), while
`aws_calls.CallRecorder` records each AWS operation the product makes. The grants come from the template after
the real SAM transform (samtranslator): the inline policies of each function's role, and the AWS managed
policies SAM attaches, expanded to their actions. A call without a grant fails in AWS with AccessDenied; a
grant without a call is privilege nothing needs. Both fail here, naming the function and the action.

When a function starts (or stops) calling an AWS API, its Policies in template.yaml change with it, and a
scenario in SCENARIOS takes the path that makes the call (a grant no scenario exercises reads as unused). When
AWS needs a permission for a call without the call being that action (launch-template checks, KMS behind SNS,
the Lambda service itself), it goes in NEEDED_WITHOUT_A_CALL with the call that needs it and the AWS page that
says so.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import fnmatch
import hashlib
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.retries.standard
import pytest
from aws_calls import CallRecorder, recording_new_sessions
from capacity_harness import (
    ENDPOINT_DOWN,
    MIN_ON_DEMAND,
    NO_SPOT_CAPACITY,
    Capacity,
    alarm_change,
    launch_failure,
    schedule,
    with_replicas,
)
from cfn import Stack, load_template, sam_translate
from conftest import MODEL_ID, REGION, create_stack
from control import control_deps_for, instance_ids
from faults import FaultInjector
from moto import mock_aws
from scenario import Scenario

from spotkeeper.gateway.backend import state_table_backend
from spotkeeper.gateway.errors import BackendUnavailable
from spotkeeper.settings import GatewaySettings, authorizer_env
from spotkeeper_local.aws_events import rebalance_recommendation, scheduled, spot_interruption
from spotkeeper_local.emulated_fleet import EmulatedInstances
from spotkeeper_local.lambda_runtime import invoke, load_function
from spotkeeper_local.lifecycle_hooks import TERMINATING, GroupWatcher, LifecycleHooks
from spotkeeper_local.sim_clock import SimClock
from spotkeeper_local.world import World

ATTACH = {
    "Mode": "attach",
    "ExistingGroupName": "spotkeeper-tgi",
    "ExistingEipAllocationId": "eipalloc-0123456789abcdef0",
}
FUNCTIONS = {
    "InterruptionFunction": "interruption",
    "LifecycleFunction": "lifecycle",
    "HealthFunction": "health",
    "CapacityFunction": "capacity",
    "GatewayFunction": "gateway",
    "AuthorizerFunction": "authorizer",
}


# ------------------------------------------------------------------------------------------------------------
# What AWS needs granted although the function never calls it
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Needed:
    action: str
    by: str  # the call, or the service behaviour, that needs it
    doc: str


_BASIC = "https://docs.aws.amazon.com/aws-managed-policy/latest/reference/AWSLambdaBasicExecutionRole.html"
_XRAY = "https://docs.aws.amazon.com/aws-managed-policy/latest/reference/AWSXrayWriteOnlyAccess.html"
_VPC = "https://docs.aws.amazon.com/aws-managed-policy/latest/reference/AWSLambdaVPCAccessExecutionRole.html"
_DESTINATION = "https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html"
_SNS_KMS = "https://docs.aws.amazon.com/sns/latest/dg/sns-key-management.html"
_LAUNCH_TEMPLATE = (
    "https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-launch-template-permissions.html"
)

# The AWS managed policies SAM attaches to function roles, as their pages list them.
MANAGED_POLICY_ACTIONS = {
    "AWSLambdaBasicExecutionRole": ("logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"),
    "AWSXrayWriteOnlyAccess": (
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
        "xray:GetSamplingRules",
        "xray:GetSamplingTargets",
        "xray:GetSamplingStatisticSummaries",
    ),
    "AWSLambdaVPCAccessExecutionRole": (
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "ec2:CreateNetworkInterface",
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribeSubnets",
        "ec2:DeleteNetworkInterface",
        "ec2:AssignPrivateIpAddresses",
        "ec2:UnassignPrivateIpAddresses",
    ),
}

LAMBDA_LOGS = tuple(
    Needed(action, "Lambda writes the function's logs to CloudWatch Logs", _BASIC)
    for action in MANAGED_POLICY_ACTIONS["AWSLambdaBasicExecutionRole"]
)
TRACING = tuple(
    Needed(action, "Lambda sends the function's traces (Tracing: Active)", _XRAY)
    for action in MANAGED_POLICY_ACTIONS["AWSXrayWriteOnlyAccess"]
)
VPC_NETWORK = tuple(
    Needed(action, "Lambda manages the function's network interfaces in the VPC (VpcConfig)", _VPC)
    for action in MANAGED_POLICY_ACTIONS["AWSLambdaVPCAccessExecutionRole"]
    if action.startswith("ec2:")
)
FAILED_EVENTS_TO_DLQ = (
    Needed("sqs:SendMessage", "Lambda sends a failed async invocation to the OnFailure destination", _DESTINATION),
)
ALERTS_TO_ENCRYPTED_TOPIC = (
    Needed("kms:GenerateDataKey*", "sns:Publish to the KMS-encrypted alert topic", _SNS_KMS),
    Needed("kms:Decrypt", "sns:Publish to the KMS-encrypted alert topic", _SNS_KMS),
)
GROUP_LAUNCH_TEMPLATE = (
    Needed(
        "ec2:RunInstances",
        "autoscaling:UpdateAutoScalingGroup of a launch-template group",
        _LAUNCH_TEMPLATE,
    ),
    Needed(
        "ec2:CreateTags",
        "autoscaling:UpdateAutoScalingGroup: the template tags what it launches",
        _LAUNCH_TEMPLATE,
    ),
    Needed(
        "iam:PassRole",
        "autoscaling:UpdateAutoScalingGroup: the template has an instance profile",
        _LAUNCH_TEMPLATE,
    ),
)

# Per function: update this when a function gains or loses such a need (a VPC, a destination, a KMS topic).
NEEDED_WITHOUT_A_CALL: dict[str, tuple[Needed, ...]] = {
    "interruption": LAMBDA_LOGS + TRACING + FAILED_EVENTS_TO_DLQ + ALERTS_TO_ENCRYPTED_TOPIC,
    "lifecycle": LAMBDA_LOGS + TRACING + VPC_NETWORK + FAILED_EVENTS_TO_DLQ + ALERTS_TO_ENCRYPTED_TOPIC,
    "health": LAMBDA_LOGS + TRACING + VPC_NETWORK + FAILED_EVENTS_TO_DLQ + ALERTS_TO_ENCRYPTED_TOPIC,
    "capacity": LAMBDA_LOGS + TRACING + FAILED_EVENTS_TO_DLQ + ALERTS_TO_ENCRYPTED_TOPIC + GROUP_LAUNCH_TEMPLATE,
    "gateway": LAMBDA_LOGS + TRACING + VPC_NETWORK,
    "authorizer": LAMBDA_LOGS + TRACING,
}


# ------------------------------------------------------------------------------------------------------------
# What the template grants
# ------------------------------------------------------------------------------------------------------------
def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def granted_actions(cfn: dict[str, Any], parameters: dict[str, str] | None = None) -> dict[str, set[str]]:
    """Per function, every action its role allows: inline policies and the managed policies' actions."""
    stack = Stack(cfn, parameters=parameters)
    grants: dict[str, set[str]] = {}
    for logical_id, function in FUNCTIONS.items():
        role_id = cfn["Resources"][logical_id]["Properties"]["Role"]["Fn::GetAtt"][0]
        role = stack.resolve(cfn["Resources"][role_id]["Properties"])
        actions: set[str] = set()
        for policy in role.get("Policies", []):
            for statement in _as_list(policy["PolicyDocument"]["Statement"]):
                assert statement["Effect"] == "Allow", (function, statement)
                actions.update(_as_list(statement["Action"]))
        for arn in role.get("ManagedPolicyArns", []):
            name = arn.rsplit("/", 1)[-1]
            assert name in MANAGED_POLICY_ACTIONS, f"{function}: managed policy {name}: list its actions here"
            actions.update(MANAGED_POLICY_ACTIONS[name])
        grants[function] = actions
    return grants


def _covers(grant: str, action: str) -> bool:
    return fnmatch.fnmatchcase(action.lower(), grant.lower())


def differences(function: str, granted: set[str], called: set[str]) -> list[str]:
    """What is wrong with one function's grants, one line per action; empty when they match the calls."""
    needed = {n.action: n for n in NEEDED_WITHOUT_A_CALL[function]}
    problems = [
        f"{function} calls {action} without a grant: add it to {function}'s Policies in template.yaml"
        for action in sorted(called)
        if not any(_covers(grant, action) for grant in granted)
    ]
    problems += [
        f"{function} is granted {grant} and never calls it: remove it from its Policies in template.yaml "
        "(or, if AWS needs it for another call, add it to NEEDED_WITHOUT_A_CALL with the call and the AWS page)"
        for grant in sorted(granted)
        if grant not in needed and not any(_covers(grant, action) for action in called)
    ]
    problems += [
        f"{function}: NEEDED_WITHOUT_A_CALL lists {action} ({n.by}) but the role does not grant it"
        for action, n in sorted(needed.items())
        if action not in granted
    ]
    problems += [
        f"{function}: NEEDED_WITHOUT_A_CALL lists {action} but the function calls it: drop it from that list"
        for action in sorted(needed)
        if any(_covers(action, call) for call in called)
    ]
    return problems


# ------------------------------------------------------------------------------------------------------------
# The scenarios: every path of every function that calls AWS
# ------------------------------------------------------------------------------------------------------------
@contextmanager
def recorded_stack(recorder: CallRecorder, capacity_rebalance: bool = True) -> Iterator[Any]:
    with mock_aws():
        session = boto3.session.Session(region_name=REGION)
        stack = create_stack(session, capacity_rebalance=capacity_rebalance)
        recorder.attach(session)
        yield stack


@dataclass
class Control:
    stack: Any
    clock: SimClock
    hooks: LifecycleHooks
    fleet: EmulatedInstances
    watcher: GroupWatcher
    deps: Any

    def scenario(self, seed: int = 1) -> Scenario:
        return Scenario(self.deps, self.watcher, self.fleet, self.stack.session.client("ec2"), rng=random.Random(seed))

    def invoke(self, function: str, event: dict[str, Any], timeout: float = 300.0) -> Any:
        return invoke(function, event, self.deps, clock=self.clock, timeout=timeout)


@contextmanager
def control(stack: Any, load_seconds: Any = 0.0, **env: str) -> Iterator[Control]:
    clock, hooks = SimClock(), LifecycleHooks()
    fleet = EmulatedInstances(stack.session.client("ec2"), MODEL_ID, clock, load_seconds=load_seconds)
    deps = control_deps_for(stack, clock=clock, tgi=fleet.tgi_client(), hooks=hooks, **env)
    watcher = GroupWatcher(stack.session.client("autoscaling"), stack.group, hooks)
    watcher.known = set()  # the first instance's launch hook is still pending when the stack comes up
    try:
        yield Control(stack, clock, hooks, fleet, watcher, deps)
    finally:
        fleet.close()


def interruption_of_the_serving_instance(recorder: CallRecorder) -> None:
    """Launch, serve, Spot warning, scale-out replacement, EIP moved when ready, doomed one retired, probe."""
    with recorded_stack(recorder) as stack:
        [first] = instance_ids(stack)
        with control(stack, load_seconds=lambda iid: 0.0 if iid == first else 90.0) as world:
            world.scenario().run()
            scenario = world.scenario()
            scenario.emit(spot_interruption(first, at=world.clock.now()))
            scenario.run()
            assert stack.eip_holder() != first
            assert world.invoke("health", scheduled())["healthy"] is True


def slow_replacement_finished_by_the_probe(recorder: CallRecorder) -> None:
    """The replacement's model loads past the launch function's time: heartbeats, hand-over, the probe
    promotes it and retires the doomed instance."""
    with recorded_stack(recorder) as stack:
        [first] = instance_ids(stack)
        with control(stack, load_seconds=lambda iid: 0.0 if iid == first else 600.0) as world:
            world.scenario().run()
            scenario = world.scenario()
            scenario.emit(spot_interruption(first, at=world.clock.now()))
            scenario.run()
            assert stack.eip_holder() == first
            assert "waiting" in world.invoke("health", scheduled())["launches"].values()
            world.clock.advance(400)
            assert "promoted" in world.invoke("health", scheduled())["launches"].values()
            world.scenario().run()
            assert stack.eip_holder() != first


def interruption_of_the_primary_of_two(recorder: CallRecorder) -> None:
    """Two ready replicas: the primary's warning moves the EIP to the other one at once (hedged replicas)."""
    with recorded_stack(recorder) as stack:
        stack.session.client("autoscaling").update_auto_scaling_group(
            AutoScalingGroupName=stack.group, MaxSize=3, DesiredCapacity=2
        )
        with control(stack) as world:
            world.scenario().run()
            primary = stack.eip_holder()
            assert world.invoke("interruption", spot_interruption(primary))["outcome"] == "replacement-started"
            assert stack.eip_holder() not in {None, primary}


def interruption_without_headroom_detaches(recorder: CallRecorder) -> None:
    with recorded_stack(recorder) as stack:
        stack.session.client("autoscaling").update_auto_scaling_group(AutoScalingGroupName=stack.group, MaxSize=1)
        [first] = instance_ids(stack)
        with control(stack) as world:
            assert world.invoke("interruption", spot_interruption(first))["outcome"] == "replacement-started"
            assert first not in instance_ids(stack)


def detached_instance_retired_once_its_replacement_serves(recorder: CallRecorder) -> None:
    """A group at MaxSize without Capacity Rebalancing: the at-risk instance is tagged and detached, and
    terminated by whoever promotes the replacement (the launch hook here, the probe after a hand-over)."""
    for handed_over in (False, True):
        with recorded_stack(recorder, capacity_rebalance=False) as stack:
            autoscaling = stack.session.client("autoscaling")
            autoscaling.update_auto_scaling_group(AutoScalingGroupName=stack.group, MaxSize=1)
            [first] = instance_ids(stack)
            loads = {first: 0.0}
            with control(
                stack, load_seconds=lambda iid, loads=loads, later=600.0 * handed_over: loads.get(iid, later)
            ) as world:
                world.scenario().run()
                assert world.invoke("interruption", rebalance_recommendation(first))["outcome"] == (
                    "replacement-started"
                )
                world.scenario().run()
                if handed_over:
                    world.clock.advance(700)
                    assert "promoted" in world.invoke("health", scheduled())["launches"].values()
                assert stack.eip_holder() != first


def first_deploy_signals_the_waiting_stack(recorder: CallRecorder) -> None:
    """Create mode's first instance: promoted by the launch hook, or by the probe when its model loads past the
    launch function's time; either signals the stack (SignalResource answered by the local world's stand-in)."""
    for load in (0.0, 600.0):
        with (
            recorded_stack(recorder) as stack,
            control(stack, load_seconds=load, CREATION_SIGNAL_STACK="spotkeeper") as world,
        ):
            [first] = instance_ids(stack)
            world.scenario().run()
            if load:
                world.clock.advance(700)
                world.invoke("health", scheduled())
            assert stack.eip_holder() == first


def rebalance_recommendations(recorder: CallRecorder) -> None:
    for capacity_rebalance in (True, False):
        with recorded_stack(recorder, capacity_rebalance=capacity_rebalance) as stack:
            [first] = instance_ids(stack)
            with control(stack) as world:
                outcome = world.invoke("interruption", rebalance_recommendation(first))["outcome"]
                assert outcome == ("recorded" if capacity_rebalance else "replacement-started")
                assert world.invoke("interruption", spot_interruption("i-0000000000000000f"))["outcome"] == "ignored"


def spot_takes_the_doomed_instance_first(recorder: CallRecorder) -> None:
    """Terminated before its replacement is ready: the terminate hook gives the extra capacity back."""
    with recorded_stack(recorder) as stack:
        [first] = instance_ids(stack)
        with control(stack) as world:
            assert world.invoke("interruption", spot_interruption(first))["outcome"] == "replacement-started"
            assert stack.group_description()["DesiredCapacity"] == 2
            world.invoke("lifecycle", world.watcher.lifecycle_event(first, TERMINATING))
            assert stack.group_description()["DesiredCapacity"] == 1


def launch_abandoned_past_its_deadline(recorder: CallRecorder) -> None:
    with recorded_stack(recorder) as stack:
        [first] = instance_ids(stack)
        with control(stack, load_seconds=10_000.0, LAUNCH_DEADLINE_SECONDS="200") as world:
            world.fleet.boot(first)
            event = world.watcher.lifecycle_event(first, "autoscaling:EC2_INSTANCE_LAUNCHING")
            assert world.invoke("lifecycle", event)["outcome"] == "abandoned"


def launch_that_fails_past_its_retries(recorder: CallRecorder) -> None:
    """The reaction raises: Powertools releases the event's idempotency record for Lambda's retry."""
    with recorded_stack(recorder) as stack, pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore.retries.standard.ExponentialBackoff, "delay_amount", lambda self, context: 0)
        [first] = instance_ids(stack)
        with control(stack) as world:
            world.fleet.boot(first)
            FaultInjector(failures_per_call=99, only={"AssociateAddress"}).install(world.deps.clients.ec2)
            event = world.watcher.lifecycle_event(first, "autoscaling:EC2_INSTANCE_LAUNCHING")
            with pytest.raises(Exception, match=r"RequestLimitExceeded|InternalError"):
                world.invoke("lifecycle", event)


def probe_adopts_repairs_and_marks_unhealthy(recorder: CallRecorder) -> None:
    with recorded_stack(recorder) as stack:
        [first] = instance_ids(stack)
        # With Replicas 2 a failing instance is marked Unhealthy (the others serve); with 1 its replacement is
        # launched beside it (SetDesiredCapacity, called by the probe's give-back as well).
        with control(stack, REPLICAS="2") as world:
            server = world.fleet.boot(first)
            assert world.invoke("health", scheduled())["serving"] == first
            ec2 = stack.session.client("ec2")
            association = ec2.describe_addresses(AllocationIds=[stack.eip_allocation_id])["Addresses"][0]
            ec2.disassociate_address(AssociationId=association["AssociationId"])
            world.invoke("health", scheduled())
            assert stack.eip_holder() == first
            server.set_unhealthy(True)
            for _ in range(3):
                world.invoke("health", scheduled())
            assert stack.group_description()["Instances"][0]["HealthStatus"] == "Unhealthy"


def fall_back_alarms_and_fall_forward(recorder: CallRecorder) -> None:
    with recorded_stack(recorder) as stack:
        capacity = Capacity(stack, SimClock())
        clock = capacity.clock
        assert capacity.invoke(launch_failure(stack, NO_SPOT_CAPACITY, clock.now())) == "fell-back"
        capacity.invoke(alarm_change(ENDPOINT_DOWN, "ALARM", clock.now()))
        capacity.invoke(alarm_change("spotkeeper-dlq-not-empty", "ALARM", clock.now()))
        assert capacity.invoke(schedule(clock.now())) == "too-soon"
        clock.advance(MIN_ON_DEMAND + 60)
        capacity.market.set_score(3)
        assert capacity.invoke(schedule(clock.now())) == "spot-unlikely"
        capacity.market.set_score(9, [capacity.zone_id()])
        capacity.market.set_price("g5.2xlarge", 0.45)
        assert capacity.invoke(schedule(clock.now())) == "returning-to-spot"
        assert capacity.invoke(schedule(clock.now())) == "on-spot"


def fall_forward_on_price_after_an_interrupted_run(recorder: CallRecorder) -> None:
    with recorded_stack(recorder) as stack, pytest.MonkeyPatch.context() as patch:
        capacity = Capacity(stack, SimClock())
        clock = capacity.clock
        assert capacity.invoke(launch_failure(stack, NO_SPOT_CAPACITY, clock.now())) == "fell-back"
        clock.advance(MIN_ON_DEMAND)
        capacity.market.withhold_scores("UnauthorizedOperation")
        capacity.market.set_price("g6.2xlarge", 0.40, zones=["us-east-1a"])
        real_set_mode = capacity.deps.state.set_mode

        def dying_once(*args: Any, **kwargs: Any) -> Any:
            patch.setattr(capacity.deps.state, "set_mode", real_set_mode)
            raise RuntimeError("Lambda timed out")

        patch.setattr(capacity.deps.state, "set_mode", dying_once)
        tick = schedule(clock.now())
        with pytest.raises(RuntimeError):
            capacity.invoke(tick)
        assert capacity.invoke(tick) == "returning-to-spot"


def group_whose_instance_type_is_in_its_launch_template(recorder: CallRecorder) -> None:
    with recorded_stack(recorder) as stack:
        autoscaling = stack.session.client("autoscaling")
        policy = {
            "LaunchTemplate": {
                "LaunchTemplateSpecification": {"LaunchTemplateId": stack.launch_template_id, "Version": "$Latest"}
            },
            "InstancesDistribution": {"OnDemandBaseCapacity": 0, "OnDemandPercentageAboveBaseCapacity": 0},
        }
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName="single-type",
            MinSize=1,
            MaxSize=2,
            DesiredCapacity=1,
            VPCZoneIdentifier=stack.subnet_id,
            MixedInstancesPolicy=policy,
        )
        single = dataclasses.replace(stack, group="single-type")
        capacity = Capacity(single, SimClock())
        assert capacity.invoke(launch_failure(single, NO_SPOT_CAPACITY, capacity.clock.now())) == "fell-back"


def hedged_replicas_fall_back_per_missing_spot_replica(recorder: CallRecorder) -> None:
    """Two replicas: which instances are Spot is asked of EC2 (DescribeInstances) to count the missing ones."""
    with recorded_stack(recorder) as stack:
        with recorder.paused():  # the group as the template creates it with Replicas 2 (CloudFormation's calls)
            first, _ = with_replicas(stack, 2)
        capacity = Capacity(stack, SimClock(), REPLICAS="2")
        clock = capacity.clock
        with recorder.paused():  # the interruption function's record of the warning (its call, not capacity's)
            capacity.deps.state.begin_replacement(stack.group, first, "doomed_at", clock.now(), "event-1", "group", 2)
        assert capacity.invoke(launch_failure(stack, NO_SPOT_CAPACITY, clock.now())) == "fell-back"


def gateway_reads_the_serving_instance(recorder: CallRecorder) -> None:
    # The gateway builds its own session for the table, as in Lambda.
    with recorded_stack(recorder) as stack, recording_new_sessions(recorder):
        settings = GatewaySettings.model_validate({"GROUP_NAME": stack.group, "STATE_TABLE_NAME": stack.table_name})
        with pytest.raises(BackendUnavailable):
            asyncio.run(state_table_backend(settings).resolve())
        with control(stack) as world:
            world.fleet.boot(instance_ids(stack)[0])
            world.invoke("health", scheduled())
        backend = asyncio.run(state_table_backend(settings).resolve())
        assert backend.instance_id == instance_ids(stack)[0]


def authorizer_checks_keys(recorder: CallRecorder) -> None:
    """Every request's key is looked up by its hash (the one AWS call of the authorizer, allowed or not)."""
    with (
        recorded_stack(recorder) as stack,
        pytest.MonkeyPatch.context() as patch,
        recording_new_sessions(recorder),
    ):
        patch.setenv("STATE_TABLE_NAME", stack.table_name)
        app = load_function("authorizer")
        app._store.cache_clear()
        authorizer_env.cache_clear()
        key, unknown = "spk_" + "a" * 40, "spk_" + "b" * 40
        # The key's record as the operator CLI writes it (a call from the test: not counted as the function's).
        boto3.session.Session(region_name=REGION).resource("dynamodb").Table(stack.table_name).put_item(
            Item={"pk": "apikey", "sk": hashlib.sha256(key.encode()).hexdigest(), "name": "alice", "enabled": True}
        )
        arn = "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/dev/POST/generate"
        try:
            allowed = invoke("authorizer", {"type": "TOKEN", "methodArn": arn, "authorizationToken": f"Bearer {key}"})
            assert allowed["principalId"] == "alice"
            with pytest.raises(Exception, match="Unauthorized"):
                invoke("authorizer", {"type": "TOKEN", "methodArn": arn, "authorizationToken": f"Bearer {unknown}"})
        finally:
            app._store.cache_clear()
            authorizer_env.cache_clear()


def reconcile_after_a_redeploy(recorder: CallRecorder) -> None:
    """The five-minute reconcile: a lost lifecycle hook is put back, a replacement's capacity given back."""
    with recorded_stack(recorder) as stack:
        capacity = Capacity(stack, SimClock())
        clock = capacity.clock
        [doomed] = [i["InstanceId"] for i in stack.group_description()["Instances"]]
        with recorder.paused():  # the record an interruption's scale-out leaves (that call is interruption's)
            capacity.deps.state.begin_replacement(
                stack.group, doomed, "doomed_at", clock.now(), "event-1", "scale-out", 1
            )
        autoscaling = boto3.session.Session(region_name=REGION).client("autoscaling")
        autoscaling.delete_lifecycle_hook(LifecycleHookName="spotkeeper-launch", AutoScalingGroupName=stack.group)
        outcome = capacity.invoke(schedule(clock.now()))
        assert outcome == "on-spot; reconciled desired-capacity, hooks", outcome


def probe_gives_back_capacity_of_a_lost_termination(recorder: CallRecorder) -> None:
    """A scale-out replacement's predecessor is terminating and its terminate event was lost: the probe gives
    the extra capacity back (SetDesiredCapacity)."""
    with recorded_stack(recorder) as stack:
        clock = SimClock()
        with recorder.paused():  # the world, the record and the scale-out an interruption leaves
            world = World.build(
                stack.session, clock, {"health": stack.env()}, group=stack.group, launching=False, tgi_from_fleet=True
            )
            assert world.group is not None
            [doomed] = [i["InstanceId"] for i in stack.group_description()["Instances"]]
            deps = world.deps["health"]
            deps.state.begin_replacement(stack.group, doomed, "doomed_at", clock.now(), "event-1", "scale-out", 1)
            deps.clients.autoscaling.set_desired_capacity(AutoScalingGroupName=stack.group, DesiredCapacity=2)
            world.group.reclaim(doomed)
            world.group.take()  # its terminate event is lost
        try:
            report = invoke("health", scheduled(), deps, clock=clock)
            assert report["capacity_given_back"] == [doomed], report
        finally:
            world.close()


SCENARIOS: tuple[Callable[[CallRecorder], None], ...] = (
    interruption_of_the_serving_instance,
    slow_replacement_finished_by_the_probe,
    interruption_without_headroom_detaches,
    detached_instance_retired_once_its_replacement_serves,
    first_deploy_signals_the_waiting_stack,
    interruption_of_the_primary_of_two,
    rebalance_recommendations,
    spot_takes_the_doomed_instance_first,
    launch_abandoned_past_its_deadline,
    launch_that_fails_past_its_retries,
    probe_adopts_repairs_and_marks_unhealthy,
    fall_back_alarms_and_fall_forward,
    fall_forward_on_price_after_an_interrupted_run,
    group_whose_instance_type_is_in_its_launch_template,
    hedged_replicas_fall_back_per_missing_spot_replica,
    gateway_reads_the_serving_instance,
    authorizer_checks_keys,
    reconcile_after_a_redeploy,
    probe_gives_back_capacity_of_a_lost_termination,
)


@pytest.fixture(scope="module")
def recorded() -> CallRecorder:
    recorder = CallRecorder()
    for scenario in SCENARIOS:
        scenario(recorder)
    return recorder


@pytest.fixture(scope="module")
def cfn() -> dict[str, Any]:
    return sam_translate(load_template())


# ------------------------------------------------------------------------------------------------------------
# The checks
# ------------------------------------------------------------------------------------------------------------
def test_every_aws_call_is_made_on_behalf_of_a_function(recorded: CallRecorder) -> None:
    assert recorded.unattributed == set()
    assert set(recorded.calls) == set(FUNCTIONS.values())


@pytest.mark.parametrize("function", sorted(FUNCTIONS.values()))
@pytest.mark.parametrize("mode", ["create", "attach"])
def test_role_grants_exactly_what_the_function_calls(cfn, recorded, function, mode) -> None:
    parameters = (
        {
            "Mode": "attach",
            "ExistingGroupName": "spotkeeper-tgi",
            "ExistingEipAllocationId": "eipalloc-0123456789abcdef0",
        }
        if mode == "attach"
        else None
    )
    granted = granted_actions(cfn, parameters)[function]
    problems = differences(function, granted, recorded.calls[function])
    assert not problems, "\n".join(problems)


def test_every_needed_without_a_call_names_the_call_and_an_aws_page() -> None:
    for function, needs in NEEDED_WITHOUT_A_CALL.items():
        assert function in FUNCTIONS.values()
        for need in needs:
            assert need.by and need.doc.startswith("https://docs.aws.amazon.com/"), (function, need)


def test_a_grant_nothing_calls_and_a_call_nothing_grants_both_fail(cfn, recorded) -> None:
    template = load_template()
    statements = template["Resources"]["InterruptionFunction"]["Properties"]["Policies"][0]["Statement"]
    # Given the interruption function's role with one grant more and sns:Publish taken away
    widened = copy.deepcopy(template)
    widened_statements = widened["Resources"]["InterruptionFunction"]["Properties"]["Policies"][0]["Statement"]
    widened_statements.append({"Effect": "Allow", "Action": "ec2:TerminateInstances", "Resource": "*"})
    for statement in widened_statements:
        if statement["Action"] == "sns:Publish":
            statement["Action"] = "sns:ListTopics"
    assert any(s["Action"] == "sns:Publish" for s in statements)  # the real template is untouched
    granted = granted_actions(sam_translate(widened))["interruption"]
    # Then the comparison names both, and what to do
    problems = differences("interruption", granted, recorded.calls["interruption"])
    assert any(p.startswith("interruption calls sns:Publish without a grant") for p in problems), problems
    assert any(p.startswith("interruption is granted ec2:TerminateInstances and never calls it") for p in problems)
    assert any(p.startswith("interruption is granted sns:ListTopics and never calls it") for p in problems)
    # And a call the scenarios make that the real template does not grant is caught the same way
    assert differences("interruption", granted_actions(cfn)["interruption"], {"ec2:TerminateInstances"})
