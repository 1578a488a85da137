"""Hedged replicas' availability (issue 12): every hedged scenario file at N = 2 is at least as available as its
N = 1 counterpart (scenarios/n1/), and passes its own expectations.

The slow test plays the files through the drill as `make demo` does (subprocesses, --json) at a launch-to-ready of
LOAD_SECONDS, longer than the two-minute warning like the realistic ~451 s but shorter, to keep the suite's time:
`make bench` (bench/availability.py) plays them at the realistic default.
"""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bench import availability
from spotkeeper_local.scenario_file import ScenarioFileError, folder, load, parse

ROOT = Path(__file__).resolve().parents[1]
HEDGED = availability.SCENARIOS
LOAD_SECONDS = 180.0


def figures(gateway: tuple[float, int], eip: tuple[float, int]) -> dict[str, Any]:
    return {
        "gateway_longest_no_success_seconds": gateway[0],
        "gateway_failed": gateway[1],
        "eip_longest_no_success_seconds": eip[0],
        "eip_failed": eip[1],
    }


# -- the comparison -------------------------------------------------------------------------------------------
def test_n2_without_a_failure_is_at_least_as_available_as_an_n1_outage():
    ok, why = availability.at_least_as_available(figures((61, 30), (62, 31)), figures((2, 0), (2, 0)), interval=2)
    assert ok and why == ""


def test_a_longer_outage_or_more_failures_at_n2_is_not():
    # Longer without a success through the gateway
    ok, why = availability.at_least_as_available(figures((61, 30), (61, 30)), figures((70, 30), (61, 30)), 2)
    assert not ok and "gateway: 70 s without a success at N = 2, 61 s at N = 1" in why
    # More failed requests of the EIP's clients, though no longer a window
    ok, why = availability.at_least_as_available(figures((61, 30), (61, 30)), figures((61, 30), (61, 31)), 2)
    assert not ok and why == "eip: 31 failed at N = 2, 30 at N = 1"
    # Within one request interval of N = 1's window is the same availability (the clients sample that often)
    assert availability.at_least_as_available(figures((61, 30), (61, 30)), figures((63, 30), (61, 30)), 2)[0]


def test_the_gap_between_two_successes_is_no_outage():
    assert availability.outage(2.0, 0) == 0.0 and availability.outage(61.0, 3) == 61.0


def test_compare_gives_each_scenario_a_row_per_n_and_the_verdict_on_n2():
    def report(gateway: tuple[float, int], eip: tuple[float, int]) -> dict[str, Any]:
        return {
            "request_interval_seconds": 2.0,
            "scenarios": {
                "both-warned": {
                    "clients": {"longest_outage_seconds": gateway[0], "failed": gateway[1], "sent": 100},
                    "facts": {"eip_clients": {"longest_no_success_seconds": eip[0], "failed": eip[1], "sent": 100}},
                    "capacity_mode": "spot",
                    "passed": True,
                    "checks": [],
                }
            },
        }

    rows = availability.compare({1: report((331, 160), (331, 160)), 2: report((300, 150), (340, 170))})
    assert [(r["scenario"], r["replicas"]) for r in rows] == [("both-warned", 1), ("both-warned", 2)]
    assert rows[1]["n2_at_least_n1"] is False and "eip: 340 s" in rows[1]["why_not"]
    assert "n2_at_least_n1" not in rows[0]
    text = "\n".join(availability.render({"rows": rows, "n2_at_least_n1_everywhere": False}))
    assert "both-warned" in text and "NO" in text


# -- the files ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", HEDGED)
def test_each_hedged_scenario_has_an_n1_counterpart_with_the_same_clients(name):
    two = load(availability.scenario_file(name, 2))
    one = load(availability.scenario_file(name, 1))
    assert (two.name, one.name) == (name, name)
    assert two.setup.replicas == 2 and one.setup.replicas == 1
    assert two.setup.clients == one.setup.clients and two.setup.clients.via == "both"
    assert two.setup.load_seconds is None and one.setup.load_seconds is None  # the realistic default, both
    # the N = 1 run is at least as long: its outage is never cut short
    assert one.run.seconds == two.run.seconds or one.run.until == two.run.until or name == "both-warned"


def test_the_n1_counterparts_are_not_in_the_folder_make_demo_plays():
    assert not any(p.parent.name == "n1" for p in folder())
    assert {p.stem for p in folder()} >= set(HEDGED)


def test_a_target_may_name_its_zone_and_the_setup_its_zones():
    scenario = parse(
        """\
name: z
title: z
setup: {replicas: 2, zones: 2, clients: {via: both}}
timeline:
  - {at: 30, do: spot-capacity-lost, zones: [us-east-1a]}
  - {at: 30, do: spot-interruption-warning, target: any-spot, zone: us-east-1a}
run: {seconds: 60}
expect:
  longest_no_success_seconds: {max: 10}
""",
        "z.yaml",
    )
    assert scenario.setup.zones == 2 and scenario.timeline[1].zone == "us-east-1a"
    with pytest.raises(ScenarioFileError, match=r"z.yaml: line 3: setup.zones"):
        parse(
            "name: z\ntitle: z\nsetup: {zones: 9}\nrun: {seconds: 1}\nexpect: {longest_no_success_seconds: {max: 1}}",
            "z.yaml",
        )


# -- played ---------------------------------------------------------------------------------------------------
def _play(out: Path, replicas: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["layers/spotkeeper", "local"])}
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        env.pop(name, None)
    config = availability.AvailabilityConfig(scenarios=HEDGED, clients=1, load_seconds=LOAD_SECONDS)
    finished = subprocess.run(  # noqa: S603 - the drill itself, as `make demo` runs it
        availability.drill_command(replicas, config, out),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert finished.returncode in (0, 1), f"drill failed:\n{finished.stderr[-4000:]}"
    return json.loads(finished.stdout)


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    # N = 1 and N = 2 in two drill processes at once (simulated time: their figures do not depend on the machine)
    outs = {n: tmp_path_factory.mktemp(f"n{n}") for n in availability.REPLICAS}
    with ThreadPoolExecutor(max_workers=len(outs)) as pool:
        futures = {n: pool.submit(_play, out, n) for n, out in outs.items()}
        return {n: future.result() for n, future in futures.items()}


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.parametrize("name", HEDGED)
def test_n2_is_at_least_as_available_as_n1_and_passes_its_expectations(played, name):
    rows = {r["replicas"]: r for r in availability.compare(played) if r["scenario"] == name}
    one, two = rows[1], rows[2]
    # Given the scenario played at N = 1 and at N = 2 with the same clients of the gateway and of the EIP
    assert one["gateway_sent"] > 100 and two["gateway_sent"] > 100 and one["eip_sent"] > 100 and two["eip_sent"] > 100
    # Then N = 2 is at least as available: no longer without a success, no more failed requests, either client
    assert two["n2_at_least_n1"], two["why_not"]
    # ...and each file passes its own expectations
    assert two["drill_checks_passed"], (name, two["failed_checks"])
    assert one["drill_checks_passed"], (name, one["failed_checks"])
    # An interruption at N = 1 is an outage (the replacement loads past the warning), so the comparison means it
    assert availability.outage(one["gateway_longest_no_success_seconds"], one["gateway_failed"]) > 0


def test_the_text_report_charts_each_replicas_state_and_where_the_eip_was():
    from spotkeeper_local.report import replica_chart

    facts = {
        "replica_states": {
            "i-a": [[0.0, "ready"], [30.0, "warned"], [150.0, "gone"]],
            "i-b": [[0.0, "ready"]],
            "i-c": [[30.0, "loading"], [90.0, "ready"]],
        },
        "zones": {"i-a": "us-east-1a", "i-b": "us-east-1b", "i-c": "us-east-1b"},
        "primary_changes": [[0.0, "i-a"], [31.0, "i-b"]],
    }
    lines = replica_chart(facts, 180.0)
    rows = {line.split("|")[0].strip(): line.split("|")[1] for line in lines if "|" in line}
    # one column = 3 s: i-a ready to t=30, warned to t=150, then gone
    assert rows["A i-a us-east-1a"] == "R" * 10 + "W" * 40 + "." * 10
    assert rows["C i-c us-east-1b"] == " " * 10 + "l" * 20 + "R" * 30
    assert rows["EIP on (a letter above, - nothing)"] == "A" * 11 + "B" * 49
    assert replica_chart({}, 180.0) == []  # a single instance's scenario draws none
