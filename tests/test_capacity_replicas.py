"""Hedged replicas, capacity side: the On-Demand fallback keeps N replicas when Spot cannot, one On-Demand replica
per missing Spot replica, and hands them back to Spot per replica; against moto.

The group is grown to N Spot instances (``capacity_harness.with_replicas``). A replica Spot takes back is recorded
as the interruption function records it (doomed), while Auto Scaling's attempt to replace it on Spot fails.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from capacity_harness import (
    ENDPOINT_DOWN,
    MIN_ON_DEMAND,
    NO_SPOT_CAPACITY,
    Capacity,
    alarm_change,
    launch_failure,
    policy_of,
    schedule,
    with_replicas,
)

from spotkeeper.capacity_policy import writable_policy
from spotkeeper.logic.capacity import fallback_count
from spotkeeper.records import ON_DEMAND, SPOT
from spotkeeper.settings import CapacityEnv, ConfigurationError
from spotkeeper_local.sim_clock import SimClock

ZONE_SHORT_G5 = (
    "We currently do not have sufficient g5.2xlarge capacity in the Availability Zone you requested "
    "(us-east-1a). Our system will be working on provisioning additional capacity. Launching EC2 instance failed."
)


class _Answered:
    status_code = 200
    headers: dict[str, str] = {}
    content = b""


@dataclass
class ScoresByCapacity:
    """Spot placement scores that fall with the capacity asked, as AWS's do (a score is for TargetCapacity
    instances): ``ceilings`` caps the world market's score of a request for that many instances. moto has no
    GetSpotPlacementScores; the world's market answers it, this handler (registered first) caps its answer."""

    market: Any
    ceilings: dict[int, int] = field(default_factory=dict)

    def install(self, ec2_client: Any) -> None:
        def before_call(context: dict[str, Any], **_: Any) -> Any:
            params = context.get("spotkeeper_api_params", {})
            answer = self.market.get_spot_placement_scores(params)
            ceiling = self.ceilings.get(params.get("TargetCapacity", 1), 10)
            for score in answer["SpotPlacementScores"]:
                score["Score"] = min(score["Score"], ceiling)
            answer["ResponseMetadata"] = {"HTTPStatusCode": 200, "RequestId": "scores-by-capacity"}
            return _Answered(), answer

        ec2_client.meta.events.register_first("before-call.ec2.GetSpotPlacementScores", before_call)

    # the world market's scripting, through
    def set_score(self, score: int, zone_ids: list[str] | None = None) -> None:
        self.market.set_score(score, zone_ids)

    def score_calls(self) -> list[dict[str, Any]]:
        return self.market.score_calls()

    @property
    def zones(self) -> dict[str, str]:
        return self.market.zones


def hedged(stack: Any, replicas: int = 2, floor: int = 0, **env: str) -> tuple[Capacity, list[str], ScoresByCapacity]:
    capacity = Capacity(stack, SimClock(), REPLICAS=str(replicas), ON_DEMAND_FLOOR=str(floor), **env)
    market = ScoresByCapacity(capacity.market)
    market.install(capacity.clients.ec2)
    instances = with_replicas(stack, replicas)
    if floor:
        distribution = {**policy_of(stack)["InstancesDistribution"], "OnDemandBaseCapacity": floor}
        stack.session.client("autoscaling").update_auto_scaling_group(
            AutoScalingGroupName=stack.group,
            MixedInstancesPolicy={**writable_policy(policy_of(stack)), "InstancesDistribution": distribution},
        )
    return capacity, instances, market


def lose(capacity: Capacity, instance_id: str) -> None:
    """Spot takes the replica back: recorded doomed, as the interruption function records a warning."""
    state, group, now = capacity.deps.state, capacity.stack.group, capacity.clock.now()
    state.begin_replacement(group, instance_id, "doomed_at", now, f"warning-{instance_id}", "group", 2)


def base(stack: Any) -> int:
    return int(policy_of(stack)["InstancesDistribution"]["OnDemandBaseCapacity"])


def fallback_alerts(stack: Any) -> list[dict[str, Any]]:
    return [a for a in stack.alerts() if a["attributes"]["event"] == "fallback-on-demand"]


# --- the count ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("held", "room", "spot_holding", "expected"),
    [
        (0, 1, 1, 1),  # one replica: a Spot shortage always falls back (today's product)
        (0, 2, 1, 1),  # one of two Spot replicas lost
        (0, 2, 0, 2),  # both lost
        (1, 2, 1, 1),  # the same missing replica again: covered already
        (1, 2, 0, 2),  # the other one lost too
        (0, 2, 2, 1),  # both still there (their records lag): the failure itself shows one missing
        (2, 2, 0, 2),  # never above the room
        (0, 1, 0, 1),  # floor 1 of 2: one replica above the floor
    ],
)
def test_one_on_demand_replica_per_missing_spot_replica(held, room, spot_holding, expected):
    assert fallback_count(held, room, spot_holding) == expected


@pytest.mark.parametrize(
    ("held", "room", "spot_holding", "expected"),
    [
        (0, 2, 2, 0),  # the failed zone's launch went to another zone: both Spot replicas hold, no fallback
        (0, 2, 1, 1),  # one still missing although the group is full (a leaving one counted as active)
        (1, 2, 2, 1),  # never below what is held: the return to Spot decides that
    ],
)
def test_a_group_no_longer_short_falls_back_only_for_what_is_missing(held, room, spot_holding, expected):
    assert fallback_count(held, room, spot_holding, short=False) == expected


def test_a_floor_above_the_replicas_is_refused(stack):
    with pytest.raises(ConfigurationError, match="ON_DEMAND_FLOOR"):
        CapacityEnv.from_environ(stack.env(ENDPOINT_DOWN_ALARM_NAME=ENDPOINT_DOWN, REPLICAS="2", ON_DEMAND_FLOOR="3"))


# --- fallback -------------------------------------------------------------------------------------------
def test_one_spot_replica_lost_puts_one_replica_on_on_demand(stack):
    # Given two Spot replicas, one of them taken back, and Spot unable to replace it
    capacity, (first, second), _ = hedged(stack)
    lose(capacity, first)
    clock = capacity.clock
    # When Auto Scaling's Spot launch fails, and fails again on its retries
    outcomes = []
    for _ in range(3):
        clock.advance(30)
        outcomes.append(capacity.invoke(launch_failure(stack, NO_SPOT_CAPACITY, clock.now())))
    # Then one replica (not two) is on On-Demand, once
    assert outcomes == ["fell-back", "already-on-demand", "already-on-demand"]
    assert base(stack) == 1
    endpoint = capacity.endpoint()
    assert endpoint.mode == ON_DEMAND and endpoint.on_demand_replicas == 1
    [alert] = fallback_alerts(stack)
    subject = f"[spotkeeper critical] {stack.group} falls back to On-Demand for 1 of 2 replicas"
    assert alert["subject"].startswith(subject)
    assert alert["body"]["on_demand_base_capacity"] == 1 and alert["body"]["replicas"] == 2


def test_both_spot_replicas_lost_puts_both_on_on_demand(stack):
    capacity, instances, _ = hedged(stack)
    for instance in instances:
        lose(capacity, instance)
    assert capacity.invoke(launch_failure(stack, NO_SPOT_CAPACITY, capacity.clock.now())) == "fell-back"
    assert base(stack) == 2 and capacity.endpoint().on_demand_replicas == 2


def test_the_second_replica_lost_later_adds_the_second_on_demand_replica(stack):
    capacity, (first, second), _ = hedged(stack)
    clock = capacity.clock
    lose(capacity, first)
    assert capacity.invoke(launch_failure(stack, NO_SPOT_CAPACITY, clock.now())) == "fell-back"
    assert base(stack) == 1
    clock.advance(600)
    lose(capacity, second)
    assert capacity.invoke(launch_failure(stack, NO_SPOT_CAPACITY, clock.now())) == "fell-back"
    assert base(stack) == 2
    assert [a["body"]["on_demand_replicas"] for a in fallback_alerts(stack)] == [1, 2]
    # And nothing more, however often Spot fails again
    clock.advance(60)
    assert capacity.invoke(launch_failure(stack, NO_SPOT_CAPACITY, clock.now())) == "already-on-demand"
    assert base(stack) == 2


def test_a_floor_of_one_and_one_missing_spot_replica_make_a_base_of_two(stack):
    # Two replicas, one always On-Demand (the floor), the other on Spot; the Spot one is taken back
    capacity, (on_demand, spot), _ = hedged(stack, floor=1)
    from capacity_harness import run_on_spot

    stack.session.client("ec2")  # the floor's instance: moto's On-Demand one
    run_on_spot(spot)
    _on_demand(on_demand)
    lose(capacity, spot)
    assert capacity.invoke(launch_failure(stack, NO_SPOT_CAPACITY, capacity.clock.now())) == "fell-back"
    assert base(stack) == 2 and capacity.endpoint().on_demand_replicas == 1
    # Never above the replicas: the endpoint-down alarm on top changes nothing
    capacity.clock.advance(60)
    assert capacity.invoke(alarm_change(ENDPOINT_DOWN, "ALARM", capacity.clock.now())) == "already-on-demand"
    assert base(stack) == 2


def _on_demand(instance_id: str) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    ec2_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].get_instance(instance_id).lifecycle = None


def test_the_endpoint_down_alarm_puts_every_replica_on_on_demand_never_more(stack):
    capacity, instances, _ = hedged(stack, replicas=3)
    clock = capacity.clock
    state = capacity.deps.state
    assert state.set_serving(stack.group, instances[0], "10.0.1.10", clock.now() - 3600, 0)
    assert capacity.invoke(alarm_change(ENDPOINT_DOWN, "ALARM", clock.now())) == "fell-back"
    assert base(stack) == 3 and capacity.endpoint().on_demand_replicas == 3
    for instance in instances:
        lose(capacity, instance)
    clock.advance(60)
    assert capacity.invoke(launch_failure(stack, NO_SPOT_CAPACITY, clock.now())) == "already-on-demand"
    assert base(stack) == 3


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_replayed_and_reordered_failures_of_both_replicas_switch_once(stack, seed):
    # Given both replicas taken back a minute apart, each failed replacement reported, each report delivered
    # up to three times, in any order, after both were lost
    capacity, (first, second), _ = hedged(stack)
    clock = capacity.clock
    lose(capacity, first)
    early = launch_failure(stack, NO_SPOT_CAPACITY, clock.now())
    clock.advance(60)
    lose(capacity, second)
    late = launch_failure(stack, ZONE_SHORT_G5, clock.now())
    clock.advance(5)
    deliveries = [early, early, late, late, late, early]
    random.Random(seed).shuffle(deliveries)
    outcomes = [capacity.invoke(event) for event in deliveries]
    # Then both replicas are on On-Demand, switched once, alerted once
    assert outcomes.count("fell-back") == 1
    assert set(outcomes) <= {"fell-back", "already-on-demand"}
    assert base(stack) == 2 and capacity.endpoint().on_demand_replicas == 2
    assert len(fallback_alerts(stack)) == 1


def test_a_failure_older_than_the_last_change_is_stale(stack):
    capacity, (first, second), market = hedged(stack)
    clock = capacity.clock
    lose(capacity, first)
    old = launch_failure(stack, NO_SPOT_CAPACITY, clock.now())
    assert capacity.invoke(old) == "fell-back"
    # The fallback's replica goes back to Spot ...
    clock.advance(MIN_ON_DEMAND)
    market.set_score(9)
    assert capacity.invoke(schedule(clock.now())) == "returning-to-spot"
    assert base(stack) == 0
    # ... and a late redelivery of the old failure does not undo that, even with a replica missing again
    lose(capacity, second)
    assert capacity.invoke(old) == "stale"
    assert base(stack) == 0 and capacity.endpoint().mode == SPOT


# --- back to Spot ---------------------------------------------------------------------------------------
def test_back_to_spot_per_replica_as_the_scores_allow(stack):
    # Given both replicas on On-Demand
    capacity, instances, market = hedged(stack)
    clock = capacity.clock
    for instance in instances:
        lose(capacity, instance)
    assert capacity.invoke(launch_failure(stack, NO_SPOT_CAPACITY, clock.now())) == "fell-back"
    clock.advance(MIN_ON_DEMAND)
    # When Spot scores 9 for one instance but 4 for two
    market.set_score(9)
    market.ceilings = {2: 4}
    # Then one replica goes back to Spot, launch-before-terminate
    assert capacity.invoke(schedule(clock.now())) == "returning-to-spot"
    asked = [call["TargetCapacity"] for call in market.score_calls()]
    assert asked == [2, 1]
    assert base(stack) == 1
    endpoint = capacity.endpoint()
    assert endpoint.on_demand_replicas == 1 and endpoint.mode == ON_DEMAND
    assert endpoint.mode_reason == "spot-back: placement score 9 >= 7"
    # (no instance refresh: the lowered base makes Auto Scaling replace one On-Demand instance, none of the others)
    assert capacity.group.refresh_calls == []
    # And the second waits the minimum time between changes (anti-flap), then goes back when Spot holds two
    clock.advance(MIN_ON_DEMAND - 300)
    market.ceilings = {}
    assert capacity.invoke(schedule(clock.now())) == "too-soon"
    clock.advance(300)
    assert capacity.invoke(schedule(clock.now())) == "returning-to-spot"
    assert base(stack) == 0 and capacity.endpoint().mode == SPOT
    assert [call["TargetCapacity"] for call in market.score_calls()][2:] == [2]
    forward = [a for a in stack.alerts() if a["attributes"]["event"] == "fall-forward-spot"]
    assert [a["body"]["on_demand_replicas"] for a in forward] == [1, 0]
    assert forward[0]["subject"].startswith("[spotkeeper info] Back on Spot for 1 of 2 replicas")


def test_no_return_while_spot_holds_not_even_one(stack):
    capacity, instances, market = hedged(stack)
    for instance in instances:
        lose(capacity, instance)
    assert capacity.invoke(launch_failure(stack, NO_SPOT_CAPACITY, capacity.clock.now())) == "fell-back"
    capacity.clock.advance(MIN_ON_DEMAND)
    market.set_score(3)
    assert capacity.invoke(schedule(capacity.clock.now())) == "spot-unlikely"
    assert base(stack) == 2 and capacity.group.refresh_calls == []


def test_pools_that_just_failed_are_left_out_of_the_return(stack):
    # Given one replica on On-Demand, pools cached for as long as the minimum time on On-Demand
    capacity, (first, second), market = hedged(stack, FAILED_POOL_SECONDS=str(MIN_ON_DEMAND))
    clock = capacity.clock
    lose(capacity, first)
    assert capacity.invoke(launch_failure(stack, NO_SPOT_CAPACITY, clock.now())) == "fell-back"
    # And, half-way, Auto Scaling failing again to place a g5.2xlarge on Spot in us-east-1a (covered already)
    clock.advance(MIN_ON_DEMAND / 2)
    covered = launch_failure(stack, ZONE_SHORT_G5, clock.now())
    assert capacity.invoke(covered) == "already-on-demand"
    # When the fall-forward looks, Spot scoring 9
    clock.advance(MIN_ON_DEMAND / 2)
    market.set_score(9)
    assert capacity.invoke(schedule(clock.now())) == "returning-to-spot"
    # Then the type that just failed was not asked about (the zone-wide failure of the fallback itself has aged out)
    [asked] = market.score_calls()
    assert asked["InstanceTypes"] == ["g6.2xlarge"]


def test_a_zone_that_just_failed_for_every_type_is_not_scored(stack):
    capacity, (first, second), market = hedged(stack, FAILED_POOL_SECONDS=str(MIN_ON_DEMAND))
    clock = capacity.clock
    lose(capacity, first)
    assert capacity.invoke(launch_failure(stack, NO_SPOT_CAPACITY, clock.now())) == "fell-back"
    clock.advance(MIN_ON_DEMAND / 2)
    assert capacity.invoke(launch_failure(stack, NO_SPOT_CAPACITY, clock.now(), zone="us-east-1a")) == (
        "already-on-demand"
    )
    clock.advance(MIN_ON_DEMAND / 2)
    # us-east-1a scores 10, us-east-1b 2: only us-east-1b counts while us-east-1a is cached
    zone_ids = {name: zone_id for zone_id, name in market.zones.items()}
    market.set_score(2)
    market.set_score(10, [zone_ids["us-east-1a"]])
    assert capacity.invoke(schedule(clock.now())) == "spot-unlikely"
    # Once the cache runs out, us-east-1a's score counts again
    clock.advance(MIN_ON_DEMAND / 2)
    assert capacity.invoke(schedule(clock.now())) == "returning-to-spot"
    # (the one On-Demand replica returning makes two Spot replicas: the score asked is for two)
    assert capacity.endpoint().mode_reason == "spot-back: placement score 10 >= 7 for 2 Spot replicas"


def test_the_cache_never_outlives_the_minimum_time_on_on_demand(stack):
    # FailedPoolSeconds above MinOnDemandSeconds: the failures that caused the fallback are gone when it may end
    capacity, (first, second), market = hedged(stack, FAILED_POOL_SECONDS="86400")
    clock = capacity.clock
    lose(capacity, first)
    assert capacity.invoke(launch_failure(stack, ZONE_SHORT_G5, clock.now())) == "fell-back"
    clock.advance(MIN_ON_DEMAND)
    market.set_score(9)
    assert capacity.invoke(schedule(clock.now())) == "returning-to-spot"
    [asked] = market.score_calls()
    assert asked["InstanceTypes"] == ["g5.2xlarge", "g6.2xlarge"]


# --- reconcile ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("floor", "expected"), [(0, 1), (1, 2)])
def test_reconcile_expects_the_floor_plus_the_fallback(stack, floor, expected):
    capacity, (first, second), _ = hedged(stack, floor=floor)
    if floor:
        _on_demand(first)
    lose(capacity, second)
    assert capacity.invoke(launch_failure(stack, NO_SPOT_CAPACITY, capacity.clock.now())) == "fell-back"
    assert base(stack) == expected
    stack.alerts()
    # A redeploy writes the template's policy back: OnDemandBaseCapacity = the floor
    capacity.deps.policy.set_on_demand_base(floor)
    capacity.clock.advance(300)
    assert capacity.invoke(schedule(capacity.clock.now())) == "too-soon; reconciled on-demand-base"
    assert base(stack) == expected
    [alert] = stack.alerts()
    assert alert["body"]["found"] == floor and alert["body"]["restored"] == expected
    # And a base above floor + fallback is drift, alerted, not changed
    capacity.deps.policy.set_on_demand_base(expected + 1)
    assert capacity.invoke(schedule(capacity.clock.now())) == "too-soon; reconciled purchase-options-drift"
    assert base(stack) == expected + 1


def test_a_failure_reported_while_every_replica_is_on_demand_is_not_cached(stack):
    # With every replica on On-Demand the group launches no Spot: a failure reported then is a late report of an
    # attempt from before the switch, and the minimum time on On-Demand covers it
    capacity, instances, market = hedged(stack, FAILED_POOL_SECONDS=str(MIN_ON_DEMAND))
    clock = capacity.clock
    for instance in instances:
        lose(capacity, instance)
    assert capacity.invoke(launch_failure(stack, NO_SPOT_CAPACITY, clock.now())) == "fell-back"
    clock.advance(60)
    assert capacity.invoke(launch_failure(stack, ZONE_SHORT_G5, clock.now())) == "already-on-demand"
    clock.advance(MIN_ON_DEMAND - 60)
    market.set_score(9)
    assert capacity.invoke(schedule(clock.now())) == "returning-to-spot"
    assert market.score_calls()[0]["InstanceTypes"] == ["g5.2xlarge", "g6.2xlarge"]


def test_a_fallback_recorded_before_there_was_a_count_reads_as_one_replica(stack):
    # An endpoint item written by the single-instance product: mode on-demand, no count
    capacity, _, _ = hedged(stack)
    table = stack.session.resource("dynamodb").Table(stack.table_name)
    table.put_item(Item={"pk": f"group#{stack.group}", "sk": "endpoint", "mode": ON_DEMAND, "version": 3})
    assert capacity.endpoint().on_demand_replicas == 1
    state, now = capacity.deps.state, capacity.clock.now()
    # A switch that read another count loses; the one that read 1 wins
    assert not state.set_mode(stack.group, ON_DEMAND, "r", now, ON_DEMAND, on_demand_replicas=2, expected_replicas=0)
    assert state.set_mode(stack.group, ON_DEMAND, "r", now, ON_DEMAND, on_demand_replicas=2, expected_replicas=1)
    assert capacity.endpoint().on_demand_replicas == 2
    with pytest.raises(ValueError):
        state.set_mode(stack.group, SPOT, "r", now, ON_DEMAND, on_demand_replicas=1, expected_replicas=2)


def test_racing_returns_from_one_mode_carry_out_the_first_decision(stack):
    # Given both replicas on On-Demand, and a racing fall-forward that has begun a return of one of them (recorded,
    # base not lowered yet)
    capacity, instances, market = hedged(stack)
    clock = capacity.clock
    for instance in instances:
        lose(capacity, instance)
    assert capacity.invoke(launch_failure(stack, NO_SPOT_CAPACITY, clock.now())) == "fell-back"
    clock.advance(MIN_ON_DEMAND)
    since = capacity.endpoint().mode_since
    journal = capacity.deps.journal
    assert journal.begin_return(since, 1, "spot-back: placement score 8 >= 7") == (
        1,
        "spot-back: placement score 8 >= 7",
    )
    # When this run finds Spot holding both
    market.set_score(10)
    assert capacity.invoke(schedule(clock.now())) == "returning-to-spot"
    # Then it carries out what was recorded first: one replica returns, not two; a later begin gets the same answer
    assert base(stack) == 1 and capacity.endpoint().on_demand_replicas == 1
    assert capacity.endpoint().mode_reason == "spot-back: placement score 8 >= 7"
    assert journal.begin_return(since, 0, "other") == (1, "spot-back: placement score 8 >= 7")
    assert market.score_calls() == []  # nothing left to decide
