"""Game days as files: the scenario format, its errors, its schema, and the scenarios of scenarios/ played.

The slow tests play scenario files through the drill as `make demo` does (a subprocess, --json) and judge the
report: the six scenarios that were code (the four single-instance ones and the two of hedged replicas) give the
figures the code gave at the realistic default launch-to-ready (recorded from main before they were deleted:
tests/data/drill_code_scenarios.json), and every other file of scenarios/ passes its own expectations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from spotkeeper_local import drill
from spotkeeper_local.scenario_file import (
    SCENARIOS_DIR,
    SCHEMA_PATH,
    ScenarioFileError,
    evaluate,
    folder,
    load,
    load_all,
    parse,
    schema_text,
)

ROOT = Path(__file__).resolve().parents[1]
CODE_FIGURES = json.loads((ROOT / "tests" / "data" / "drill_code_scenarios.json").read_text())["scenarios"]
# Played by test_hedged_availability (each at N = 2 beside its N = 1 counterpart, its own expectations checked).
PLAYED_BESIDE_N1 = ("zone-spot-lost", "both-warned", "on-demand-return")
NEW = (
    "replacement-interrupted",
    "tgi-hang",
    "eip-moved-during-launch",
    "terminated-by-hand",
    "dynamodb-throttled-interruption",
    "lost-launch-event",
)

GOOD = """\
name: sample
title: a sample
setup:
  load_seconds: 180
timeline:
  - {at: 30, do: spot-interruption-warning, target: serving}
  - at: 150
    do: reclaim
    target: original
run:
  seconds: 30 + max(load, 120) + 90
expect:
  longest_no_success_seconds: {max: "max(0, load - 120) + 10 + chaos"}
  eip_on: replacement
"""


def _error(text: str) -> str:
    with pytest.raises(ScenarioFileError) as caught:
        parse(text, "game.yaml")
    return str(caught.value)


# -- the format ---------------------------------------------------------------------------------------------
def test_a_well_formed_file_reads_into_its_actions():
    scenario = parse(GOOD, "game.yaml")
    assert [(a.at, a.do) for a in scenario.timeline] == [(30, "spot-interruption-warning"), (150, "reclaim")]
    assert scenario.timeline[1].target == "original"
    # ...its times and bounds are seconds, or expressions of the launch-to-ready (and of what chaos cost)
    assert evaluate(scenario.run.seconds, load=451) == 571
    assert evaluate(scenario.expect.longest_no_success_seconds.max, load=451, chaos=0) == 341
    assert evaluate(scenario.expect.longest_no_success_seconds.max, load=60, chaos=25) == 35
    assert scenario.setup.replicas == 1 and scenario.setup.clients.count == 1 and scenario.setup.chaos is None


def test_json_is_read_as_well():
    import yaml

    scenario = parse(json.dumps(yaml.safe_load(GOOD)), "game.json")
    assert scenario.name == "sample" and len(scenario.timeline) == 2


def test_an_unknown_action_is_an_error_naming_file_line_and_field():
    message = _error(GOOD.replace("do: reclaim", "do: reboot"))
    assert "game.yaml: line 8: timeline[1].do" in message
    assert "reboot" in message or "does not match" in message


def test_a_bad_role_is_an_error_naming_file_line_and_field():
    message = _error(GOOD.replace("target: original", "target: the-big-one"))
    assert "game.yaml: line 9: timeline[1].target" in message
    assert "'serving'" in message  # the roles it could have been


def test_a_bad_time_is_an_error_naming_file_line_and_field():
    negative = _error(GOOD.replace("- at: 150", "- at: -5"))
    assert "game.yaml: line 7: timeline[1].at: Value error, -5 is negative" in negative
    words = _error(GOOD.replace("{at: 30,", "{at: soon,"))
    assert "game.yaml: line 6: timeline[0].at" in words and "unknown name 'soon' (known: load)" in words
    # chaos is known to bounds, not to times; only arithmetic, max() and min()
    chaos = _error(GOOD.replace("- at: 150", "- at: load + chaos"))
    assert "line 7: timeline[1].at" in chaos and "unknown name 'chaos'" in chaos
    call = _error(GOOD.replace("- at: 150", "- at: __import__('os')"))
    assert "line 7: timeline[1].at" in call and "only max(...) and min(...)" in call
    power = _error(GOOD.replace("seconds: 30 + max(load, 120) + 90", "seconds: load ** 2"))
    assert "line 11: run.seconds" in power
    too_long = _error(GOOD.replace("- at: 150", "- at: 99999"))
    assert "line 7: timeline[1].at" in too_long and "outside 0-7200 seconds" in too_long


def test_a_time_that_evaluates_negative_stops_the_engine_not_the_parser():
    from spotkeeper_local.drill_scenarios import Engine, ScenarioError

    engine = Engine.__new__(Engine)  # only its arithmetic: no world
    engine.scenario = parse(GOOD, "game.yaml")
    engine.world = type("World", (), {"load_seconds": 60.0})()
    assert engine.time("load - 30") == 30
    with pytest.raises(ScenarioError, match="never negative"):
        engine.time("load - 120")


def test_a_missing_expectation_field_is_an_error_naming_file_line_and_field():
    message = _error(GOOD.replace('  longest_no_success_seconds: {max: "max(0, load - 120) + 10 + chaos"}\n', ""))
    assert "game.yaml: line 12: expect.longest_no_success_seconds: Field required" in message
    bound = _error(GOOD.replace('{max: "max(0, load - 120) + 10 + chaos"}', "{min: 3}"))
    assert "game.yaml: line 13: expect.longest_no_success_seconds.max: Field required" in bound


def test_an_unknown_field_and_two_load_settings_are_errors():
    assert "line 14: expect.eip_ends_on: Extra inputs are not permitted" in _error(
        GOOD.replace("eip_on:", "eip_ends_on:")
    )
    both = _error(GOOD.replace("load_seconds: 180", "load_seconds: 180\n  fast_start: baked"))
    assert "line 3: setup: Value error, name load_seconds (a fixed time) or fast_start" in both


def test_the_setup_names_replicas_clients_and_chaos():
    hedged = GOOD.replace(
        "load_seconds: 180", "replicas: 2\n  chaos: 7\n  clients: {via: both, count: 3, interval: 1}"
    ).replace("  eip_on: replacement", "  eip_longest_no_success_seconds: {max: 10}\n  ready_replicas: 2")
    setup = parse(hedged, "game.yaml").setup
    assert (setup.replicas, setup.chaos, setup.clients.via, setup.clients.count) == (2, 7, "both", 3)
    assert setup.load_seconds is None  # the launch-to-ready model's
    assert "setup.replicas: Input should be less than or equal to 8" in _error(
        hedged.replace("replicas: 2", "replicas: 9")
    )
    assert "setup.clients.count" in _error(hedged.replace("count: 3", "count: 0"))
    # ...and an expectation about clients of the EIP needs them, one about replicas needs as many
    alone = _error(hedged.replace("via: both", "via: gateway"))
    assert "line 1: (top)" in alone and "clients.via: both" in alone
    assert "more than the setup's 2 replicas" in _error(hedged.replace("ready_replicas: 2", "ready_replicas: 3"))
    plain = _error(GOOD.replace("load_seconds: 180", "spotkeeper: false"))
    assert "line 3: setup: Value error, clients.via: without spotkeeper there is no gateway" in plain


def test_a_file_that_is_not_yaml_names_its_line():
    assert _error("name: x\ntimeline: [\n  - at").startswith("game.yaml: line 3: not YAML/JSON")


def test_a_malformed_file_plays_nothing(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("do: reclaim", "do: reboot"))

    def never(*_: Any, **__: Any) -> None:
        raise AssertionError("the drill started although a file was malformed")

    monkeypatch.setattr(drill, "run_local", never)
    assert drill.main(["--scenario", "interruption", "--scenario-file", str(bad)]) == 2
    assert f"{bad}: line 8: timeline[1].do" in capsys.readouterr().err


def test_two_files_of_one_name_are_refused(tmp_path):
    for stem in ("a", "b"):
        (tmp_path / f"{stem}.yaml").write_text(GOOD)
    with pytest.raises(ScenarioFileError, match="both named 'sample'"):
        load_all([tmp_path / "a.yaml", tmp_path / "b.yaml"])


def test_every_file_of_the_folder_is_valid_and_named_after_its_file():
    files = folder()
    assert {*CODE_FIGURES, *NEW} <= {p.stem for p in files}
    for path in files:
        assert load(path).name == path.stem


def test_the_committed_schema_is_the_one_the_model_generates():
    assert SCHEMA_PATH.read_text() == schema_text(), (
        "scenarios/schema.json is stale: python -m spotkeeper_local.scenario_file --schema > scenarios/schema.json"
    )


def test_the_cli_chooses_files_by_name_number_or_path(tmp_path):
    options = drill.options_from(drill.parser().parse_args(["--scenario", "1", "--scenario-file", "x.yaml"]))
    assert options.scenarios == (SCENARIOS_DIR / "interruption.yaml", Path("x.yaml"))
    every = drill.options_from(drill.parser().parse_args(["--scenario", "all", "--scenario-file", "x.yaml"]))
    assert every.scenarios == (*folder(), Path("x.yaml"))
    only_file = drill.options_from(drill.parser().parse_args(["--scenario-file", "x.yaml"]))
    assert only_file.scenarios == (Path("x.yaml"),)  # a file alone: not the default set besides


# -- played -------------------------------------------------------------------------------------------------
def _play(tmp_path: Path, *argv: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["layers/spotkeeper", "local"])}
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        env.pop(name, None)
    finished = subprocess.run(  # noqa: S603 - the drill itself, as `make demo` runs it
        [sys.executable, "-m", "spotkeeper_local.drill", "--json", "--no-charts", "--out", str(tmp_path), *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=2300,
    )
    assert finished.returncode in (0, 1), f"drill failed:\n{finished.stderr[-4000:]}"
    return json.loads(finished.stdout)


def _play_at_once(tmp_path: Path, groups: list[list[str]]) -> dict[str, Any]:
    """Each group of scenarios in a drill subprocess of its own, all at once: much of a fault scenario's wall time
    is real waiting (botocore's back-off, a hung TGI's liveness check), not CPU."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["layers/spotkeeper", "local"])}
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        env.pop(name, None)
    running = []
    for index, group in enumerate(groups):
        out = tmp_path / str(index)
        out.mkdir()
        command = [sys.executable, "-m", "spotkeeper_local.drill", "--json", "--no-charts", "--out", str(out)]
        command += [f"--scenario={name}" for name in group]
        # Files, not pipes: a drill whose pipe filled up would wait for the ones read before it
        with (out / "stdout").open("w") as stdout, (out / "stderr").open("w") as stderr:
            drill_process = subprocess.Popen(  # noqa: S603 - the drill itself, as `make demo` runs it
                command, cwd=ROOT, env=env, stdout=stdout, stderr=stderr, text=True
            )
        running.append((drill_process, out))
    reports = []
    for drill_process, out in running:
        drill_process.wait(timeout=2300)
        stderr_text = (out / "stderr").read_text()
        assert drill_process.returncode in (0, 1), f"drill failed:\n{stderr_text[-4000:]}"
        reports.append(json.loads((out / "stdout").read_text()))
    merged = dict(reports[0])
    merged["scenarios"] = {name: s for report in reports for name, s in report["scenarios"].items()}
    merged["launch_to_ready_sources"] = {report["launch_to_ready"]["source"] for report in reports}
    return merged


@pytest.mark.slow
@pytest.mark.timeout(1500)  # a drill subprocess of several scenarios, over the suite's 300 s per test
def test_the_scenarios_that_were_code_give_as_files_the_figures_the_code_gave(tmp_path):
    # Given the six scenarios main played in code (four single-instance, two of hedged replicas), as files, at the
    # realistic default launch-to-ready
    report = _play(tmp_path, *(f"--scenario={name}" for name in CODE_FIGURES))
    assert report["launch_to_ready"]["source"] == "model"
    for name, was in CODE_FIGURES.items():
        s = report["scenarios"][name]
        failed = [c for c in s["checks"] if not c["passed"]]
        # Then each passes as it did, and what its clients saw is what they saw then, request for request
        assert s["passed"] == was["passed"], (name, failed)
        clients = s["clients"]
        assert clients["via"] == was["via"], name
        assert (clients["failed"], clients["longest_outage_seconds"]) == (
            was["failed"],
            was["longest_outage_seconds"],
        ), name
        assert clients["recovered"] == was["recovered"], name
        # (the capacity scenario plays until it is back on Spot: a second's difference in when that is seen
        # changes how many requests were sent, not how many failed)
        assert abs(clients["sent"] - was["sent"]) <= (3 if name == "capacity" else 0), name
        # ...the capacity mode, where the EIP ends, the alerts and the alarms' transitions after t=0 are the same
        assert s["capacity_mode"].split(" ")[0] == was["capacity_mode"], name
        if "eip_on_serving" in was:
            assert ("(serving)" in s["eip_note"]) == was["eip_on_serving"], name
        assert sorted({a["event"] for a in s["alerts"] if not a["event"].startswith("alarm-")}) == was["alerts"], name
        alarms = {(a["alarm"].removeprefix(f"drill-{name}-"), a["to"]) for a in s["alarms"] if a["t"] >= 0}
        assert sorted(map(list, alarms)) == was["alarms_after_start"], name
        if "eip_failed" in was:
            eip = s["facts"]["eip_clients"]
            assert (eip["failed"], eip["longest_no_success_seconds"]) == (
                was["eip_failed"],
                was["eip_longest_outage_seconds"],
            ), name


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_every_other_scenario_file_passes_its_own_expectations(tmp_path):
    # Every file of scenarios/ beyond those that were code: the six the issue asks for and any added since
    new = sorted({p.stem for p in folder()} - set(CODE_FIGURES) - set(PLAYED_BESIDE_N1))
    assert set(NEW) <= set(new)
    report = _play_at_once(tmp_path, [new[0::3], new[1::3], new[2::3]])
    assert set(report["scenarios"]) == set(new)
    assert report["launch_to_ready_sources"] == {"model"}  # the realistic default, every file
    failed = {
        name: [f"{c['name']}: {c['detail']}" for c in s["checks"] if not c["passed"]]
        for name, s in report["scenarios"].items()
    }
    assert not any(failed.values()), failed


def test_the_drills_options_override_each_files_setup_only_when_given():
    from spotkeeper_local.drill_scenarios import chaos_of, load_seconds_of, replicas_of

    fixed = parse(GOOD.replace("load_seconds: 180", "load_seconds: 180\n  chaos: 5"), "game.yaml").setup
    modelled = parse(GOOD.replace("load_seconds: 180", "replicas: 2"), "game.yaml").setup
    default = drill.options_from(drill.parser().parse_args([]))
    # Given no option: each file's own (a fixed time, or the launch-to-ready model's), its own chaos and replicas
    assert load_seconds_of(fixed, default) == 180 and load_seconds_of(modelled, default) == drill._modelled_seconds()
    assert (chaos_of(fixed, default), chaos_of(modelled, default)) == (5, None)
    assert replicas_of(modelled, default) == 2
    # --load-seconds, --fast-start, --chaos and --replicas replace them
    given = drill.options_from(drill.parser().parse_args(["--load-seconds", "90", "--chaos", "3", "--replicas", "4"]))
    assert load_seconds_of(fixed, given) == load_seconds_of(modelled, given) == 90
    assert chaos_of(fixed, given) == chaos_of(modelled, given) == 3
    assert (replicas_of(modelled, given), replicas_of(fixed, given)) == (4, 1)  # a single-instance file stays N = 1
    baked = drill.options_from(drill.parser().parse_args(["--fast-start", "baked"]))
    assert load_seconds_of(fixed, baked) == drill._modelled_seconds("baked") < drill._modelled_seconds()
