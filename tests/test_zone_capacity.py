"""The embedded AWS's Spot market per zone and instance type, and the group stand-in spreading a group over its
zones: what the hedged replicas' drill scenarios play (a zone losing Spot capacity, replicas in different zones).

AWS behaviour stood in for: Auto Scaling balances a group's instances over the zones of its subnets, and with the
default AvailabilityZoneDistribution (balanced-best-effort) "if launches fail in an Availability Zone, Auto
Scaling will attempt to launch in another healthy Availability Zone instead" (CloudFormation reference,
AWS::AutoScaling::AutoScalingGroup AvailabilityZoneDistribution); a price-capacity-optimized Spot request takes
another instance type of the overrides where the first has no capacity.
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from moto import mock_aws

from spotkeeper_local.auto_scaling_group import GroupStandIn
from spotkeeper_local.lifecycle_hooks import LifecycleHooks
from spotkeeper_local.sim_clock import SimClock
from spotkeeper_local.spot_market import SpotMarket

REGION = "us-east-1"
GROUP = "zones-group"
TYPES = ["g5.2xlarge", "g6.2xlarge"]


@pytest.fixture
def session() -> Any:
    with mock_aws():
        yield boto3.session.Session(region_name=REGION)


def two_zone_group(session: Any, desired: int = 2, subnets: int = 2) -> tuple[GroupStandIn, list[str]]:
    """A Spot-first group over ``subnets`` zones (us-east-1a, b, ...), taken over by the stand-in as launching."""
    ec2 = session.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ids = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i + 1}.0/24", AvailabilityZone=f"{REGION}{'abc'[i]}")["Subnet"][
            "SubnetId"
        ]
        for i in range(subnets)
    ]
    template = ec2.create_launch_template(
        LaunchTemplateName=f"{GROUP}-lt", LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": TYPES[0]}
    )["LaunchTemplate"]["LaunchTemplateId"]
    session.client("autoscaling").create_auto_scaling_group(
        AutoScalingGroupName=GROUP,
        MinSize=desired,
        MaxSize=2 * desired,
        DesiredCapacity=desired,
        VPCZoneIdentifier=",".join(ids),
        MixedInstancesPolicy={
            "LaunchTemplate": {
                "LaunchTemplateSpecification": {"LaunchTemplateId": template, "Version": "$Latest"},
                "Overrides": [{"InstanceType": t} for t in TYPES],
            },
            "InstancesDistribution": {"OnDemandBaseCapacity": 0, "OnDemandPercentageAboveBaseCapacity": 0},
        },
    )
    clock = SimClock()
    market = SpotMarket(clock=clock.now)
    market.install(session.client("ec2"))
    stand_in = GroupStandIn(GROUP, LifecycleHooks(), clock, market=market).attach(launching=True)
    return stand_in, ids


def zones_of(stand_in: GroupStandIn) -> list[str]:
    return sorted(stand_in.zone_of(i) or "?" for i, _ in stand_in.members())


def failures(stand_in: GroupStandIn) -> list[dict[str, Any]]:
    return [e["detail"]["Details"] for e in stand_in.events if e["detail-type"] == "EC2 Instance Launch Unsuccessful"]


def scale_out(session: Any, to: int) -> None:
    session.client("autoscaling").set_desired_capacity(AutoScalingGroupName=GROUP, DesiredCapacity=to)


# -- the market -----------------------------------------------------------------------------------------------
def test_capacity_is_per_zone_and_type_and_the_latest_rule_wins():
    market = SpotMarket()
    market.zones = {"use1-az1": "us-east-1a", "use1-az2": "us-east-1b"}
    market.set_capacity(False, zones=["us-east-1a"])
    assert not market.has_capacity("g5.2xlarge", "us-east-1a")
    assert market.has_capacity("g5.2xlarge", "us-east-1b")
    market.set_capacity(False, instance_types=["g6.2xlarge"])
    assert not market.has_capacity("g6.2xlarge", "us-east-1b") and market.has_capacity("g5.2xlarge", "us-east-1b")
    market.set_capacity(True, zones=["us-east-1a"])  # back in 1a, every type: later than the type rule
    assert market.has_capacity("g6.2xlarge", "us-east-1a") and not market.has_capacity("g6.2xlarge", "us-east-1b")
    market.set_capacity(True)  # the whole market: scoped rules dropped
    assert market.capacity_rules == [] and market.has_capacity("g6.2xlarge", "us-east-1b")
    market.set_capacity(False)
    assert not market.has_capacity("g5.2xlarge", "us-east-1b") and not market.has_capacity()


def test_a_zone_the_region_does_not_have_is_refused_and_changes_nothing():
    market = SpotMarket()
    market.zones = {"use1-az1": "us-east-1a"}
    with pytest.raises(ValueError, match="us-east-1z"):
        market.set_capacity(False, zones=["us-east-1z"])
    with pytest.raises(ValueError, match="at least one"):
        market.set_capacity(False, instance_types=[])
    assert market.capacity_rules == [] and market.has_capacity("g5.2xlarge", "us-east-1a")


def test_a_zone_without_spot_capacity_for_the_types_asked_scores_1(session):
    market = SpotMarket(default_score=9)
    market.install(session.client("ec2"))
    names = {name: zone_id for zone_id, name in market.zones.items()}
    market.set_capacity(False, zones=["us-east-1a"])
    market.set_capacity(False, instance_types=["g6.2xlarge"], zones=["us-east-1b"])
    params = {"TargetCapacity": 2, "SingleAvailabilityZone": True, "MaxResults": 10}
    scores = market.get_spot_placement_scores({**params, "InstanceTypes": ["g5.2xlarge", "g6.2xlarge"]})
    by_zone = {s["AvailabilityZoneId"]: s["Score"] for s in scores["SpotPlacementScores"]}
    assert by_zone[names["us-east-1a"]] == 1 and by_zone[names["us-east-1b"]] == 9  # g5 still there in 1b
    only_g6 = market.get_spot_placement_scores({**params, "InstanceTypes": ["g6.2xlarge"]})
    by_zone = {s["AvailabilityZoneId"]: s["Score"] for s in only_g6["SpotPlacementScores"]}
    assert by_zone[names["us-east-1b"]] == 1 and by_zone[names["us-east-1c"]] == 9


# -- the group over its zones ---------------------------------------------------------------------------------
def test_the_first_instances_are_spread_over_the_subnets_zones(session):
    stand_in, _ = two_zone_group(session, desired=2)
    assert zones_of(stand_in) == ["us-east-1a", "us-east-1b"]
    assert all(state == "Pending:Wait" or state == "InService" for _, state in stand_in.members())
    assert len(stand_in.booted) == 2  # each boots (its TGI starts) once, the one moved to 1b included


def test_one_zone_keeps_the_group_as_moto_launched_it(session):
    stand_in, _ = two_zone_group(session, desired=2, subnets=1)
    assert zones_of(stand_in) == ["us-east-1a", "us-east-1a"]


def test_a_launch_goes_to_the_zone_with_the_fewest_instances(session):
    stand_in, _ = two_zone_group(session, desired=2)
    scale_out(session, 3)
    scale_out(session, 4)
    assert zones_of(stand_in) == ["us-east-1a", "us-east-1a", "us-east-1b", "us-east-1b"]
    assert failures(stand_in) == []


def test_a_zone_out_of_spot_fails_there_and_the_launch_goes_to_another_zone(session):
    # Given two replicas in 1a and 1b, and the Spot market of 1a dry for every type
    stand_in, subnets = two_zone_group(session, desired=2)
    stand_in.market.set_capacity(False, zones=["us-east-1a"])
    first = {i for i, _ in stand_in.members()}
    # When the group launches a third instance (1a and 1b tie, 1a is listed first)
    scale_out(session, 3)
    # Then the launch failed in 1a (the event names the zone and its subnet) and the instance runs in 1b, on Spot
    assert failures(stand_in) == [{"Subnet ID": subnets[0], "Availability Zone": "us-east-1a"}]
    assert zones_of(stand_in) == ["us-east-1a", "us-east-1b", "us-east-1b"]
    [newest] = [i for i, _ in stand_in.members() if i not in first]
    assert stand_in.purchase[newest] == "spot" and stand_in.zone_of(newest) == "us-east-1b"
    # and the group does not wait to try again: it got its capacity
    assert len(stand_in.members()) == stand_in.desired() == 3


def test_another_instance_type_is_taken_where_the_first_has_no_spot_capacity(session):
    stand_in, _ = two_zone_group(session, desired=2)
    stand_in.market.set_capacity(False, instance_types=["g5.2xlarge"], zones=["us-east-1a"])
    scale_out(session, 3)
    ec2 = session.client("ec2")
    described = ec2.describe_instances(InstanceIds=[i for i, _ in stand_in.members()])["Reservations"]
    placed = sorted((i["Placement"]["AvailabilityZone"], i["InstanceType"]) for r in described for i in r["Instances"])
    assert ("us-east-1a", "g6.2xlarge") in placed and failures(stand_in) == []


def test_no_spot_in_any_zone_fails_in_each_and_waits(session):
    stand_in, _ = two_zone_group(session, desired=2)
    stand_in.market.set_capacity(False)
    scale_out(session, 3)
    assert [f["Availability Zone"] for f in failures(stand_in)] == ["us-east-1a", "us-east-1b"]
    assert len(stand_in.members()) == 2 and stand_in.desired() == 3


def test_scale_in_takes_from_the_zone_with_the_most_instances(session):
    stand_in, _ = two_zone_group(session, desired=2)
    scale_out(session, 3)  # 1a gets the third one
    scale_out(session, 2)
    remaining = [i for i, state in stand_in.members() if not state.startswith("Terminating")]
    assert sorted(stand_in.zone_of(i) for i in remaining) == ["us-east-1a", "us-east-1b"]
