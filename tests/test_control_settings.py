"""The control functions' environment (spotkeeper.settings): strings in, typed and bounded values out, or an error
naming the variable."""

from __future__ import annotations

import pytest

from spotkeeper.settings import CapacityEnv, ConfigurationError, ControlEnv

ENV = {
    "GROUP_NAME": "spotkeeper-tgi",
    "STATE_TABLE_NAME": "spotkeeper-state",
    "ALERT_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:spotkeeper-alerts",
    "MODEL_ID": "Qwen/Qwen2.5-7B-Instruct",
    "EIP_ALLOCATION_ID": "eipalloc-0123456789abcdef0",
    "PATH": "/usr/bin",  # every other variable is ignored
}


def test_numbers_come_from_their_strings_and_defaults_fill_the_rest():
    env = ControlEnv.from_environ({**ENV, "TGI_PORT": "8081", "DRAIN_SECONDS": "90.5", "REPLICAS": "2"})
    assert (env.tgi_port, env.drain_seconds, env.replicas) == (8081, 90.5, 2)
    assert (env.launch_deadline_seconds, env.unhealthy_after_failures, env.creation_signal_stack) == (1800, 3, "")
    assert env.group_name == "spotkeeper-tgi" and env.model_id == ENV["MODEL_ID"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TGI_PORT", "0"),  # below 1
        ("TGI_PORT", "http"),  # not a number
        ("REPLICAS", "9"),  # above MAX_REPLICAS
        ("REPLICAS", "1.5"),  # not an integer
        ("PROBE_TIMEOUT_SECONDS", "0"),  # must be > 0
        ("ALERT_TOPIC_ARN", "arn:aws:sqs:us-east-1:123456789012:q"),  # not a topic
        ("EIP_ALLOCATION_ID", "10.0.0.1"),  # an address, not an allocation
        ("GROUP_NAME", ""),  # empty
        ("CREATION_SIGNAL_STACK", "1-starts-with-a-digit"),
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(variable: str, value: str):
    with pytest.raises(ConfigurationError, match=f"ControlEnv: bad or missing environment: .*{variable}"):
        ControlEnv.from_environ({**ENV, variable: value})


def test_a_missing_variable_is_named():
    with pytest.raises(ConfigurationError, match="EIP_ALLOCATION_ID"):
        ControlEnv.from_environ({k: v for k, v in ENV.items() if k != "EIP_ALLOCATION_ID"})


def test_capacity_needs_its_alarm_and_a_floor_within_the_replicas():
    with pytest.raises(ConfigurationError, match="ENDPOINT_DOWN_ALARM_NAME"):
        CapacityEnv.from_environ(ENV)
    env = CapacityEnv.from_environ({**ENV, "ENDPOINT_DOWN_ALARM_NAME": "down", "REPLICAS": "3", "ON_DEMAND_FLOOR": "1"})
    assert env.fallback_room == 2
    with pytest.raises(ConfigurationError, match=r"ON_DEMAND_FLOOR \(4\) is more than REPLICAS \(3\)"):
        CapacityEnv.from_environ({**ENV, "ENDPOINT_DOWN_ALARM_NAME": "down", "REPLICAS": "3", "ON_DEMAND_FLOOR": "4"})


def test_the_configuration_is_frozen():
    env = ControlEnv.from_environ(ENV)
    with pytest.raises(AttributeError):
        env.group_name = "another"  # type: ignore[misc]
