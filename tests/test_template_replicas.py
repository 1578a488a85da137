"""Hedged replicas in template.yaml: the group keeps Replicas serving instances with room for each one's replacement,
the OnDemandFloor is its On-Demand base, the functions are told both, and a floor above the replicas is refused
before anything is created (CloudFormation Rules, rule functions only)."""

from __future__ import annotations

from typing import Any

import pytest
from cfn import Stack, load_template, sam_translate

from spotkeeper.settings import MAX_REPLICAS

RULE_FUNCTIONS = {"Fn::And", "Fn::Contains", "Fn::Equals", "Fn::Not", "Fn::Or", "Ref"}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def cfn(template: dict[str, Any]) -> dict[str, Any]:
    return sam_translate(template)


def group(cfn: dict[str, Any], **parameters: str) -> dict[str, Any]:
    return Stack(cfn, parameters=parameters).resolve(cfn["Resources"]["FleetGroup"]["Properties"])


@pytest.mark.parametrize("replicas", [str(n) for n in range(1, MAX_REPLICAS + 1)])
def test_the_group_keeps_the_replicas_with_a_replacement_each(cfn, replicas):
    properties = group(cfn, Replicas=replicas)
    n = int(replicas)
    assert (properties["MinSize"], properties["DesiredCapacity"]) == (replicas, replicas)
    # Every replica warned at once (a zone's Spot reclaimed) still gets its replacement before it terminates
    assert int(properties["MaxSize"]) == 2 * n
    assert properties["CapacityRebalance"] is True
    distribution = properties["MixedInstancesPolicy"]["InstancesDistribution"]
    assert distribution["SpotAllocationStrategy"] == "price-capacity-optimized"
    assert distribution["OnDemandPercentageAboveBaseCapacity"] == 0


def test_the_default_is_the_single_instance_group(cfn):
    properties = group(cfn)
    assert (properties["MinSize"], properties["MaxSize"], properties["DesiredCapacity"]) == ("1", "2", "1")
    assert properties["MixedInstancesPolicy"]["InstancesDistribution"]["OnDemandBaseCapacity"] == "0"


def test_the_floor_is_the_groups_on_demand_base(cfn):
    properties = group(cfn, Replicas="3", OnDemandFloor="1")
    assert properties["MixedInstancesPolicy"]["InstancesDistribution"]["OnDemandBaseCapacity"] == "1"


def test_the_replicas_spread_over_the_fleet_subnets(cfn):
    properties = group(cfn, Replicas="2", FleetSubnetIds="subnet-0a,subnet-0b")
    assert properties["VPCZoneIdentifier"] == ["subnet-0a", "subnet-0b"]


def test_every_function_is_told_the_replicas_and_the_floor(cfn):
    stack = Stack(cfn, parameters={"Replicas": "2", "OnDemandFloor": "1", "FailedPoolSeconds": "600"})
    functions = {k: v for k, v in cfn["Resources"].items() if v["Type"] == "AWS::Lambda::Function"}
    assert functions
    for logical_id, function in functions.items():
        variables = stack.resolve(function["Properties"]["Environment"]["Variables"])
        assert (variables["REPLICAS"], variables["ON_DEMAND_FLOOR"]) == ("2", "1"), logical_id
    capacity = stack.resolve(cfn["Resources"]["CapacityFunction"]["Properties"]["Environment"]["Variables"])
    assert capacity["FAILED_POOL_SECONDS"] == "600"


def test_the_parameters_match_what_the_functions_accept(template):
    parameters = template["Parameters"]
    assert parameters["Replicas"]["AllowedValues"] == [str(n) for n in range(1, MAX_REPLICAS + 1)]
    assert [int(v) for v in parameters["OnDemandFloor"]["AllowedValues"]] == list(range(MAX_REPLICAS + 1))
    assert set(template["Mappings"]["ReplicaHeadroom"]) == set(parameters["Replicas"]["AllowedValues"])


# --- the floor rule --------------------------------------------------------------------------------------
def _evaluate(node: Any, parameters: dict[str, Any]) -> Any:
    """A rule expression as CloudFormation evaluates it (parameter values are strings there)."""
    if isinstance(node, list):
        return [_evaluate(item, parameters) for item in node]
    if not isinstance(node, dict):
        return node
    ((function, argument),) = node.items()
    assert function in RULE_FUNCTIONS, function
    if function == "Ref":
        return parameters[argument]
    values = _evaluate(argument, parameters)
    if function == "Fn::Equals":
        return str(values[0]) == str(values[1])
    if function == "Fn::Not":
        return not values[0]
    if function == "Fn::And":
        return all(values)
    if function == "Fn::Or":
        return any(values)
    return str(values[1]) in [str(v) for v in values[0]]  # Fn::Contains


def refused(template: dict[str, Any], **parameters: str) -> list[str]:
    values = Stack(template, parameters={"FleetSubnetIds": "subnet-0a", **parameters}).parameters
    rule = template["Rules"]["OnDemandFloorAtMostReplicas"]
    return [a["AssertDescription"] for a in rule["Assertions"] if not _evaluate(a["Assert"], values)]


@pytest.mark.parametrize("replicas", range(1, MAX_REPLICAS + 1))
def test_a_floor_above_the_replicas_is_refused_before_anything_is_created(template, replicas):
    for floor in range(MAX_REPLICAS + 1):
        failed = refused(template, Replicas=str(replicas), OnDemandFloor=str(floor))
        if floor <= replicas:
            assert failed == [], (replicas, floor)
        else:
            assert failed == [f"OnDemandFloor must be at most Replicas ({replicas})."], (replicas, floor)
