"""`make demo`'s game day drill, run the way `make demo` runs it and judged from its --json report.

The drill's own checks are not trusted here: each outcome is recomputed from the raw data of the report
(every request's time and result, where the EIP and the serving instance ended, what was launched when).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from spotkeeper_local import drill
from spotkeeper_local.aws_game_day import GameDayError, run_game_day, stack_outputs
from spotkeeper_local.drill_scenarios import load_seconds_of, replicas_of
from spotkeeper_local.report import state_at
from spotkeeper_local.scenario_file import load_all

ROOT = Path(__file__).resolve().parents[1]
LOAD_SECONDS = 180.0
SPOT_NOTICE = 120.0


def longest_without_success(requests: list[list[Any]], end: float) -> float:
    marks = [0.0, *(t for t, ok in requests if ok), end]
    return max(after - before for before, after in itertools.pairwise(marks))


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("drill")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["layers/spotkeeper", "local"])}
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        env.pop(name, None)
    finished = subprocess.run(  # noqa: S603 - the drill itself, as `make demo` runs it
        [
            *(sys.executable, "-m", "spotkeeper_local.drill", "--json", "--out", str(out), "--load-seconds", "180"),
            *(f"--scenario={name}" for name in drill.SCENARIOS),  # the four of scenarios/ that were code
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert finished.returncode == 0, f"drill failed:\n{finished.stderr[-4000:]}\n{finished.stdout[-4000:]}"
    return json.loads(finished.stdout), out


@pytest.fixture(scope="module")
def report(played: tuple[dict[str, Any], Path]) -> dict[str, Any]:
    return played[0]


@pytest.mark.slow
def test_the_drill_plays_every_scenario_on_a_simulated_clock(report):
    # Given the drill ran with a 3-minute launch-to-ready
    # Then it played the four scenarios on a simulated clock (its wall time is make bench's to measure)
    assert set(report["scenarios"]) == {"interruption", "rebalance", "capacity", "baseline"}
    assert report["load_seconds"] == LOAD_SECONDS
    assert report["launch_to_ready"]["source"] == "--load-seconds" and report["chaos_seed"] is None
    for scenario in report["scenarios"].values():
        assert scenario["clients"]["sent"] == len(scenario["requests"]) > 50
        assert scenario["timeline"], "a timeline per scenario"


@pytest.mark.slow
def test_interruption_moves_the_eip_to_the_replacement_within_the_downtime_bound(report):
    s = report["scenarios"]["interruption"]
    facts = s["facts"]
    # Then a replacement was launched, loaded the model for the configured time, and serves behind the EIP
    assert facts["replacement"] and facts["replacement"] != facts["interrupted"]
    assert s["eip_on"] == s["serving_instance"] == facts["replacement"]
    took = facts["replacement_launch_to_ready_seconds"]
    assert LOAD_SECONDS <= took < LOAD_SECONDS + 5
    # ...and clients went without an answer no longer than the part of the load the warning could not hide
    downtime = longest_without_success(s["requests"], s["duration"])
    assert downtime <= max(0.0, took - SPOT_NOTICE) + 10
    # ...which is not zero: the instance was reclaimed before its replacement was ready
    assert downtime >= took - SPOT_NOTICE - 5
    kinds = [alert["event"] for alert in s["alerts"]]
    assert "spot-interruption" in kinds and "eip-moved" in kinds
    # ...and the group is a group of one again (the extra capacity asked for the replacement was given back)
    assert list(s["purchase_options"]) == [facts["replacement"]]


@pytest.mark.slow
def test_the_stacks_alarm_transitions_are_in_the_report(report):
    s = report["scenarios"]["interruption"]
    assert s["alarms"] and all(set(change) == {"t", "alarm", "from", "to"} for change in s["alarms"])
    # A new stack's endpoint-down alarm finds no Healthy datapoint at its first evaluation (missing is breaching),
    # then the first instance's healthy probe brings it back to OK a minute later
    down = [(c["from"], c["to"]) for c in s["alarms"] if c["alarm"] == "drill-interruption-endpoint-down"]
    assert down[:2] == [("INSUFFICIENT_DATA", "ALARM"), ("ALARM", "OK")]
    assert any(alert["event"] == "alarm-raised" for alert in s["alerts"])


@pytest.mark.slow
def test_rebalance_ahead_of_the_warning_drops_no_request(report):
    s = report["scenarios"]["rebalance"]
    # Then not one request failed over the whole scenario, and the replacement serves behind the EIP
    assert s["requests"] and all(ok for _, ok in s["requests"])
    assert s["eip_on"] == s["serving_instance"] == s["facts"]["replacement"] != s["facts"]["at_risk"]
    # ...because the at-risk instance was reclaimed only after its replacement served
    ready = next(
        t for t, serving, _, ok in s["facts"]["serving_changes"] if serving == s["facts"]["replacement"] and ok
    )
    assert ready < s["facts"]["reclaimed_at"]
    assert list(s["purchase_options"]) == [s["facts"]["replacement"]]


@pytest.mark.slow
def test_capacity_outage_falls_back_to_on_demand_and_forward_to_spot_without_a_gap(report):
    s = report["scenarios"]["capacity"]
    facts = s["facts"]
    modes = facts["mode_changes"]
    servings = facts["serving_changes"]
    # Then during the outage the mode went on-demand and an On-Demand instance served
    fell_back = next(t for t, mode in modes if mode == "on-demand")
    assert fell_back < facts["spot_back_at"]
    on_demand = [row for row in servings if row[2] == "on-demand" and row[3]]
    assert on_demand and on_demand[0][0] < facts["spot_back_at"]
    fallback_at = on_demand[0][0]
    # ...after Spot came back, the mode is spot again and a Spot instance serves behind the EIP
    assert modes[-1][1] == "spot" and modes[-1][0] > facts["spot_back_at"]
    assert s["purchase_options"][s["serving_instance"]] == "spot"
    assert s["eip_on"] == s["serving_instance"] != on_demand[0][1]
    # ...and from the moment the On-Demand instance served, there always was a ready serving instance
    assert all(serving and ready for t, serving, _, ready in servings if t >= fallback_at)
    assert all(ok for t, ok in s["requests"] if t > fallback_at)  # sent before that second's hook served
    kinds = [alert["event"] for alert in s["alerts"]]
    assert "fallback-on-demand" in kinds and "fall-forward-spot" in kinds
    assert list(s["purchase_options"]) == [s["serving_instance"]]


@pytest.mark.slow
def test_baseline_without_spotkeeper_leaves_clients_of_the_eip_down(report):
    s = report["scenarios"]["baseline"]
    reclaimed = s["facts"]["marks"]["reclaim"]
    # Then every request to the EIP after the reclaim failed, and the EIP ended on nothing
    after = [ok for t, ok in s["requests"] if t > reclaimed]
    assert after and not any(after)
    assert s["eip_on"] is None
    assert s["clients"]["via"] == "elastic ip"
    # ...a downtime far longer than spotkeeper's for the same interruption
    baseline = longest_without_success(s["requests"], s["duration"])
    spotkeeper = longest_without_success(
        report["scenarios"]["interruption"]["requests"], report["scenarios"]["interruption"]["duration"]
    )
    assert baseline >= s["duration"] - reclaimed - 2 > spotkeeper


@pytest.mark.slow
def test_each_scenario_has_its_availability_chart(played):
    report, out = played
    for name, scenario in report["scenarios"].items():
        chart = Path(scenario["chart"])
        assert chart.parent == out and chart.name == f"{name}.png"
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- arguments -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["--load-seconds", "-1"],
        ["--load-seconds", "99999"],
        ["--load-seconds", "soon"],
        ["--scenario", "earthquake"],
        ["--request-interval", "0"],
        ["--load-seconds", "1800"],  # the launch deadline: the launch would be ABANDONed
        ["--chaos", "often"],
        ["--chaos", "-1"],
        ["--yes-really-interrupt"],
        ["--region", "eu-west-1"],
        ["--stack", "not a stack!", "--yes-really-interrupt"],
        ["--fast-start", "warp"],
        ["--fast-start", "baked", "--load-seconds", "90"],  # the model's options or a fixed time, not both
        ["--replicas", "0"],
        ["--replicas", "9"],
        ["--clients", "0"],
        ["--clients", "many"],
        ["--replicas", "2"],  # the single-instance scenarios (all) play N = 1 only
        ["--scenario", "primary-interruption", "--replicas", "1"],
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        drill.main(argv)
    assert exited.value.code == 2
    assert "error" in capsys.readouterr().err


def test_the_default_launch_to_ready_is_the_models_for_the_templates_defaults():
    from spotkeeper_local.launch_time import launch_to_ready, template_defaults

    # Given no --load-seconds
    options = drill.options_from(drill.parser().parse_args([]))
    breakdown = launch_to_ready()
    # Then every instance takes the model's launch-to-ready of the template's default model and instance type
    assert (breakdown.instance_type, breakdown.model) == template_defaults()
    assert options.load_source == "model" and options.load_seconds == round(breakdown.total)
    assert options.load_seconds > 300  # minutes, not the 60-180 s the drill used to play
    # ...and the report carries its phases, which add up to it
    shown = drill.launch_to_ready_report(options)
    assert [p["name"] for p in shown["phases"]] == ["boot", "image", "weights", "load+warmup"]
    assert round(sum(p["seconds"] for p in shown["phases"])) == shown["seconds"]
    # --load-seconds overrides it, and says so
    given = drill.options_from(drill.parser().parse_args(["--load-seconds", "90", "--chaos", "3"]))
    assert (given.load_seconds, given.load_source, given.chaos) == (90.0, "--load-seconds", 3)
    assert drill.launch_to_ready_report(given)["source"] == "--load-seconds"


def test_fast_start_plays_the_models_faster_options_and_is_reported():
    from spotkeeper_local.launch_time import LaunchOptions, launch_to_ready

    # Given --fast-start baked (S3 weights on NVMe, the image baked in the AMI)
    options = drill.options_from(drill.parser().parse_args(["--fast-start", "baked"]))
    baked = launch_to_ready(options=LaunchOptions(weights="s3", data_on_nvme=True, image="baked"))
    # Then every instance takes that option's modelled launch-to-ready: well under the default's, under 150 s
    default = drill.options_from(drill.parser().parse_args([]))
    assert options.load_seconds == round(baked.total) < default.load_seconds
    assert options.load_seconds <= 150
    shown = drill.launch_to_ready_report(options)
    assert shown["fast_start"] == "baked" and shown["options"]["image"] == "baked"
    assert round(sum(p["seconds"] for p in shown["phases"])) == shown["seconds"]
    # ...in between for s3-nvme
    s3 = drill.options_from(drill.parser().parse_args(["--fast-start", "s3-nvme"]))
    assert options.load_seconds <= s3.load_seconds < default.load_seconds


def test_scenarios_are_chosen_by_name_or_number():
    args = drill.parser().parse_args(["--scenario", "2", "--scenario", "baseline", "--scenario", "2"])
    files = drill.SCENARIOS_DIR / "rebalance.yaml", drill.SCENARIOS_DIR / "baseline.yaml"
    assert drill.options_from(args).scenarios == files
    # make demo's default: the four the drill began with; "all": every file of scenarios/
    four = tuple(drill.SCENARIOS_DIR / f"{name}.yaml" for name in drill.SCENARIOS)
    assert drill.options_from(drill.parser().parse_args([])).scenarios == four
    every = tuple(sorted(drill.SCENARIOS_DIR.glob("*.yaml")))
    assert len(every) > len(four)
    assert drill.options_from(drill.parser().parse_args(["--scenario", "all"])).scenarios == every


class _NoAws:
    """A boto3 session that fails the test if anything is asked of AWS."""

    def client(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"AWS was called: {args}")

    resource = client


def test_hedged_scenarios_are_chosen_by_name_and_take_replicas_and_clients():
    # Given the hedged scenarios named, with a number of replicas and of clients
    args = drill.parser().parse_args(
        [
            "--scenario",
            "replica-interruption",
            "--scenario",
            "primary-interruption",
            "--replicas",
            "3",
            "--clients",
            "4",
        ]
    )
    options = drill.options_from(args)
    # Then both files play, with the template's Replicas and the clients asked for, on the launch model's load
    hedged = tuple(drill.SCENARIOS_DIR / f"{name}.yaml" for name in drill.HEDGED_SCENARIOS)
    assert options.scenarios == hedged
    scenarios = load_all(list(options.scenarios))
    assert [replicas_of(s.setup, options) for s in scenarios] == [3, 3]
    assert [load_seconds_of(s.setup, options) for s in scenarios] == [drill._modelled_seconds()] * 2
    assert (options.clients, drill.replicas_refused(options, scenarios)) == (4, None)
    # ...without --replicas each file's own (2), and every file's clients (1) unless --clients says
    default = drill.options_from(drill.parser().parse_args(["--scenario", "primary-interruption"]))
    [primary] = load_all(list(default.scenarios))
    assert (replicas_of(primary.setup, default), default.clients, primary.setup.clients.count) == (2, None, 1)
    # ...and --replicas N >= 2 is refused for the single-instance files, --replicas 1 for the hedged ones
    single = load_all([drill.SCENARIOS_DIR / "interruption.yaml"])
    assert "single instance" in drill.replicas_refused(options, scenarios + single)
    one = drill.options_from(drill.parser().parse_args(["--replicas", "1"]))
    assert "--replicas 2 or more" in drill.replicas_refused(one, scenarios)
    assert drill.replicas_refused(one, single) is None


def test_a_real_game_day_is_refused_without_confirmation(capsys):
    args = drill.parser().parse_args(["--stack", "prod-endpoint"])
    assert run_game_day(args, sys.stdout, session=_NoAws()) == 2
    err = capsys.readouterr().err
    assert "--yes-really-interrupt" in err and "prod-endpoint" in err


def test_the_stack_flag_reaches_the_game_day_with_its_arguments(monkeypatch):
    seen: dict[str, argparse.Namespace] = {}

    def fake_game_day(args: argparse.Namespace, out: Any) -> int:
        seen["args"] = args
        return 0

    monkeypatch.setattr("spotkeeper_local.aws_game_day.run_game_day", fake_game_day)
    argv = ["--stack", "s1", "--yes-really-interrupt", "--region", "eu-west-1", "--watch-seconds", "120"]
    assert drill.main(argv) == 0
    args = seen["args"]
    assert (args.stack, args.region, args.yes_really_interrupt, args.watch_seconds) == ("s1", "eu-west-1", True, 120)


def test_a_stack_without_spotkeeper_outputs_is_refused():
    class Cfn:
        def describe_stacks(self, StackName: str) -> dict[str, Any]:
            return {"Stacks": [{"Outputs": [{"OutputKey": "GroupName", "OutputValue": "g"}]}]}

    with pytest.raises(GameDayError, match="FisExperimentTemplateId"):
        stack_outputs(Cfn(), "other-stack")


# -- delivery: Lambda's retries and the dead-letter queue, in the drill's own world ------------------------------
@pytest.fixture
def drill_world():
    from spotkeeper_local.drill_world import DrillWorld
    from spotkeeper_local.embedded_aws import EmbeddedAws, load_sam_template, local_template

    saved = dict(os.environ)
    aws = EmbeddedAws().start()
    aws.reset()  # moto's backends live in this process: forget the previous test's stack
    world = None
    try:
        world = DrillWorld.deploy(
            aws,
            local_template(load_sam_template()),
            "drill-retries",
            {"TgiPort": str(drill._free_port())},
            load_seconds=30,
        )
        yield world
    finally:
        if world is not None:
            world.close()
        aws.stop()
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.slow
def test_an_event_its_handler_rejects_is_retried_then_lands_in_the_dead_letter_queue(drill_world):
    world = drill_world
    poisoned = json.loads((ROOT / "events" / "malformed-spot-interruption.json").read_text())
    # When an interruption warning without an instance id is put on the bus
    world.put_event(poisoned)
    world.run_for(200)
    # Then the interruption function got it three times, a minute and then two minutes apart, and failed each time
    tries = [i for i in world.invocations if i.function == "interruption"]
    assert len(tries) == 3 and all(i.error and "InvalidEvent" in i.error for i in tries)
    assert [round(b.started - a.started) for a, b in itertools.pairwise(tries)] == [60, 120]
    # ...and the dead-letter queue holds Lambda's OnFailure record with the original event
    messages = world.sqs.receive_message(QueueUrl=world.stack.dlq_url, MaxNumberOfMessages=10)["Messages"]
    [record] = [json.loads(m["Body"]) for m in messages]
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["requestPayload"]["detail"] == poisoned["detail"]
    assert record["responsePayload"]["errorType"] == "InvalidEvent"


@pytest.mark.slow
def test_the_stacks_alarms_see_the_failures_and_reach_the_capacity_function(drill_world):
    world = drill_world
    # When an event its handler rejects is put on the bus, and retried into the dead-letter queue
    world.put_event(json.loads((ROOT / "events" / "malformed-spot-interruption.json").read_text()))
    world.run_for(260)
    # Then CloudWatch's alarms (played by cloudwatch_alarms) saw the Lambda errors and the queue's depth...
    changes = {
        (c.alarm.removeprefix("drill-retries-"), c.previous, c.state) for c in world.alarms.evaluator.transitions
    }
    assert {("function-errors", "INSUFFICIENT_DATA", "ALARM"), ("dlq-not-empty", "OK", "ALARM")} <= changes
    # ...and their state changes reached the capacity function through the template's rule, which alerted
    delivered = {
        (i.event["detail"]["alarmName"], i.event["detail"]["state"]["value"])
        for i in world.invocations
        if i.function == "capacity" and i.event.get("detail-type") == "CloudWatch Alarm State Change"
    }
    assert {("drill-retries-function-errors", "ALARM"), ("drill-retries-dlq-not-empty", "ALARM")} <= delivered
    raised = [a["summary"] for a in world.alerts if a["event"] == "alarm-raised"]
    assert any("drill-retries-dlq-not-empty is in ALARM" in summary for summary in raised)


DRILL = (sys.executable, "-m", "spotkeeper_local.drill")


@pytest.mark.slow
def test_serial_delivery_leaves_a_group_of_one_after_spot_took_the_instance_first(tmp_path):
    # Given every function throttled to one execution (a reserved concurrency of 1, per function as Lambda applies
    # it), at the realistic launch-to-ready: the launch hook's wait holds the lifecycle function's one execution
    # past the terminate hook's 300 s timeout, so the terminate event waits throttled in Lambda's queue
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["layers/spotkeeper", "local"])}
    finished = subprocess.run(  # noqa: S603 - the drill itself
        [*DRILL, "--json", "--out", str(tmp_path), "--serial-delivery", "--scenario", "interruption"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    # Then the probe, which runs in its own function, gives the extra capacity back before the reclaimed instance
    # is gone, so the group never launches a second replacement: it ends with one instance, serving
    assert finished.returncode == 0, finished.stdout[-3000:]
    s = json.loads(finished.stdout)["scenarios"]["interruption"]
    assert s["facts"]["replacement_launch_to_ready_seconds"] > 300
    assert "capacity-given-back" in {alert["event"] for alert in s["alerts"]}
    assert s["eip_on"] == s["serving_instance"] == s["facts"]["replacement"]
    assert s["passed"] and all(check["passed"] for check in s["checks"]), s["checks"]


CHAOS_SEEDS = (1, 2)


@pytest.mark.slow
@pytest.mark.parametrize("seed", CHAOS_SEEDS)
def test_the_interruption_holds_under_chaotic_event_delivery(seed, tmp_path):
    # Given every event is delivered one to three times, out of order, late, and lifecycle events now and then lost
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["layers/spotkeeper", "local"])}
    finished = subprocess.run(  # noqa: S603 - the drill itself
        [*DRILL, "--json", "--no-charts", "--out", str(tmp_path), "--scenario", "interruption", "--chaos", str(seed)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert finished.returncode in (0, 1), finished.stderr[-3000:]
    report = json.loads(finished.stdout)
    s = report["scenarios"]["interruption"]
    facts = s["facts"]
    deliveries = facts["deliveries"]
    assert report["chaos_seed"] == seed == facts["chaos_seed"]
    # Then the chaos was real: events came more than once and late
    assert any(len(d["delays"]) > 1 for d in deliveries)
    assert all(d["lost"] or 1 <= len(d["delays"]) <= 3 for d in deliveries)
    # ...and still the replacement serves behind the EIP, with no On-Demand fallback while it loaded
    assert s["eip_on"] == s["serving_instance"] == facts["replacement"] != facts["interrupted"]
    assert "fallback-on-demand" not in [a["event"] for a in s["alerts"]]
    assert all(mode == "spot" for _, mode in facts["mode_changes"])
    # ...within the downtime bound plus what the chaos cost (recomputed here from the raw deliveries)
    warning = next(
        d for d in deliveries if d["detail_type"] == "EC2 Spot Instance Interruption Warning" and not d["lost"]
    )
    lost_launch = any(
        d["lost"] and d["instance_id"] == facts["replacement"] and "launch" in d["detail_type"] for d in deliveries
    )
    took = facts["replacement_launch_to_ready_seconds"]
    bound = max(0.0, took - SPOT_NOTICE) + 10 + min(warning["delays"]) + (60 + 120 if lost_launch else 0)
    assert longest_without_success(s["requests"], s["duration"]) <= bound + 0.1
    assert list(s["purchase_options"]) == [facts["replacement"]]
    assert s["passed"], [c for c in s["checks"] if not c["passed"]]


# -- hedged replicas (issue 12): N = 2, an interruption with no rebalance lead --------------------------------
HEDGED_CLIENTS = 3
EIP_GAP_BOUND = 10.0


@pytest.fixture(scope="module")
def hedged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("hedged")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["layers/spotkeeper", "local"])}
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        env.pop(name, None)
    argv = ["--scenario", "replica-interruption", "--scenario", "primary-interruption", "--replicas", "2"]
    finished = subprocess.run(  # noqa: S603 - the drill itself, as `make demo` runs it
        [sys.executable, "-m", "spotkeeper_local.drill", "--json", "--out", str(out), "--clients", "3", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert finished.returncode == 0, f"drill failed:\n{finished.stderr[-4000:]}\n{finished.stdout[-4000:]}"
    return json.loads(finished.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["replica-interruption", "primary-interruption"])
def test_n2_interruption_without_lead_fails_no_gateway_request_and_eip_clients_wait_at_most_10_s(hedged, key):
    s = hedged["scenarios"][key]
    facts = s["facts"]
    doomed, replacement = facts["interrupted"], facts["replacement"]
    warning_at = 30.0
    # Given two replicas, the primary holding the EIP, and a warning with no lead for one of them
    assert facts["replicas"] == 2
    assert facts["interrupted_role"] == ("primary" if key == "primary-interruption" else "replica")
    assert (doomed == facts["primary_at_start"]) == (key == "primary-interruption")
    # ...on the realistic load: the replacement takes the launch-to-ready model's time, far past the warning
    assert facts["load_seconds"] > SPOT_NOTICE + 120
    assert facts["replacement_launch_to_ready_seconds"] >= facts["load_seconds"]
    # Then every request through the gateway, from several concurrent clients, was answered
    requests = s["requests"]
    assert len(requests) > 100 and all(ok for _, ok in requests)
    assert facts["clients_per_address"] == HEDGED_CLIENTS
    # ...and clients of the EIP never went more than 10 s without a successful answer
    eip = facts["eip_requests"]
    assert len(eip) > 100
    assert longest_without_success(eip, s["duration"]) <= EIP_GAP_BOUND
    # ...because the EIP sits on a ready replica all along: off a warned primary within seconds of its warning
    primary = facts["primary_changes"]
    states = facts["replica_states"]
    holder_after = state_at(primary, warning_at + 5)
    if key == "primary-interruption":
        assert holder_after != doomed
    else:
        assert holder_after == facts["primary_at_start"]
    for t in range(0, int(s["duration"]), 5):
        holder = state_at(primary, t)
        assert holder is not None and state_at(states[holder], t) == "ready", f"EIP on {holder} at t={t}"
    # Each replica's state is in the report: the doomed one warned at the warning, gone after the reclaim, its
    # replacement loading, then ready; two replicas ready at the end, the EIP on one of them
    assert state_at(states[doomed], warning_at + 5) == "warned"
    assert state_at(states[doomed], warning_at + SPOT_NOTICE + 5) == "gone"
    assert state_at(states[replacement], warning_at + 5) == "loading"
    assert state_at(states[replacement], s["duration"]) == "ready"
    assert len(facts["ready_at_end"]) == 2 and s["eip_on"] in facts["ready_at_end"]
    assert doomed not in facts["ready_at_end"]
    # ...and the warned replica got no new request once its warning was delivered (gateway and EIP both)
    assert facts["requests_to_warned_after_warning"] == 0
    assert sum(facts["requests_received"].values()) >= len(requests) + len(eip)
