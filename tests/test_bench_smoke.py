"""`make bench` in miniature: each part's real code in a tiny configuration, so the numbers it prints are
computed from what it measured (and change when what it measures changes), not typed in. No timing limits
are asserted: this machine's speed is not what is under test."""

from __future__ import annotations

import json
import py_compile
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from bench import cold_start, cost, failover, gateway_overhead, report, targets
from bench.reaction import CallCounter, calls_until_replacement
from bench.stats import percentile, summary

# The benchmarks' own code, run small (real servers, a fresh interpreter): `make unit` skips them.
pytestmark = pytest.mark.slow

REGION = "us-east-1"


def test_percentiles_interpolate_between_ranks():
    samples = [10.0, 20.0, 30.0, 40.0, 50.0]
    assert percentile(samples, 0.5) == 30.0
    assert percentile(samples, 0.99) == pytest.approx(49.6)
    assert percentile([7.0], 0.99) == 7.0
    stats = summary(samples)
    assert (stats["n"], stats["min_ms"], stats["max_ms"], stats["mean_ms"]) == (5, 10.0, 50.0, 30.0)
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_gateway_overhead_measures_both_arms_against_real_servers(tmp_path: Path):
    # Given a TGI emulator and the gateway (run.sh) in their own processes, tiny workload
    tokens, delay = 4, 0.002
    config = gateway_overhead.GatewayBenchConfig(
        levels=(2,), rounds={2: 2}, warmup_rounds=0, max_new_tokens=tokens, token_delay=delay, log_dir=tmp_path
    )
    # When
    result = gateway_overhead.run(config, progress=lambda _: None)
    # Then every arm got rounds * clients answers, each at least as slow as the emulator's own pacing
    [level] = result["levels"]
    assert level["clients"] == 2
    floor_ms = tokens * delay * 1000.0
    for workload in ("generate", "stream_total"):
        for arm in ("direct", "gateway"):
            assert level[workload][arm]["n"] == 4
            assert level[workload][arm]["min_ms"] >= floor_ms
    for arm in ("direct", "gateway"):
        assert 0 < level["stream_ttft"][arm]["p50_ms"] <= level["stream_total"][arm]["p50_ms"]
    part = level["generate"]
    assert part["p50_ratio"] == pytest.approx(part["gateway"]["p50_ms"] / part["direct"]["p50_ms"], rel=1e-3)
    assert part["p50_overhead_ms"] == pytest.approx(part["gateway"]["p50_ms"] - part["direct"]["p50_ms"], abs=1e-2)
    # The gateway kept its upstream connections open (keep-alive), at most one per concurrent client
    connections = level["connections_after"]
    assert connections is None or 1 <= connections["gateway_established_to_tgi"] <= 2
    assert result["workload"]["emulator_token_delay_ms"] == delay * 1000.0


def _lambda_files(tmp_path: Path) -> cold_start.LambdaFiles:
    """A tiny Lambda-like file system: a function, a layer with one module compiled and one not, a stand-in SDK."""
    root = tmp_path / "lambda"
    task, layer, runtime = root / "task" / "interruption", root / "opt" / "python", root / "runtime"
    for folder in (task, layer, runtime / "boto3", root / "bin"):
        folder.mkdir(parents=True)
    (root / "bin" / "python").symlink_to(cold_start.base_python())
    (runtime / "boto3" / "__init__.py").write_text("import json\n")
    (layer / "shipped.py").write_text("VALUE = 1\n")
    (layer / "unshipped.py").write_text("VALUE = 2\n")
    (task / "app.py").write_text("import boto3, shipped, unshipped\n\ndef control_deps():\n    return shipped.VALUE\n")
    for path in (layer / "shipped.py", task / "app.py", runtime / "boto3" / "__init__.py"):
        py_compile.compile(str(path), doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    tasks = {"interruption": task, "gateway": root / "task" / "gateway"}
    return cold_start.LambdaFiles(root=root, layer=layer, runtime=runtime, tasks=tasks, python=cold_start.base_python())


def test_cold_probe_imports_in_lambdas_order_and_counts_what_it_compiles(tmp_path: Path):
    files = _lambda_files(tmp_path)
    bytecode = files.bytecode_files()
    baseline = cold_start.probe("boto3", files)
    function = cold_start.probe("interruption", files)
    # Only the module shipped without bytecode was compiled, and no .pyc was written for it
    assert {k: baseline["compiled"][k] for k in ("task", "layer", "runtime")} == {"task": 0, "layer": 0, "runtime": 0}
    assert {k: function["compiled"][k] for k in ("task", "layer", "runtime")} == {"task": 0, "layer": 1, "runtime": 0}
    assert files.bytecode_files() == bytecode
    assert baseline["loaded"] == ["boto3"] and "boto3" in function["loaded"]
    assert function["import_ms"] > 0 and function["import_cpu_ms"] > 0
    assert function["total_ms"] == pytest.approx(function["import_ms"] + function["clients_ms"], abs=0.01)
    assert function["modules"] > baseline["modules"]
    assert function["process_ms"] > function["total_ms"]


def test_gateway_start_is_timed_to_its_first_answered_request(tmp_path: Path):
    files = _lambda_files(tmp_path)
    gateway = files.tasks["gateway"]
    gateway.mkdir()
    (gateway / "server.py").write_text(
        "import http.server, os, time\n"
        "time.sleep(0.3)\n"
        "class Ping(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200 if self.path == '/gateway/ping' else 404)\n"
        "        self.end_headers()\n"
        "http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), Ping).serve_forever()\n"
    )
    (gateway / "run.sh").write_text('exec python "${LAMBDA_TASK_ROOT}/server.py"\n')
    ready_ms, cpu_ms = cold_start.gateway_start(files, timeout=30)
    assert ready_ms >= 300 and cpu_ms > 0


def test_an_extension_is_traced_to_the_distribution_that_installed_it(tmp_path: Path):
    (tmp_path / "pkg").mkdir()
    extension = tmp_path / "pkg" / "_fast.cpython-313-aarch64-linux-gnu.so"
    extension.write_bytes(b"\x7fELF")
    (tmp_path / "pkg_core-2.5.0.dist-info").mkdir()
    (tmp_path / "pkg_core-2.5.0.dist-info" / "RECORD").write_text(
        "pkg/__init__.py,sha256=x,1\npkg/_fast.cpython-313-aarch64-linux-gnu.so,sha256=y,4\n"
    )
    assert cold_start._owner(extension, tmp_path) == ("pkg_core", "2.5.0")
    with pytest.raises(cold_start.ColdStartError, match="RECORD"):
        cold_start._owner(tmp_path / "pkg" / "other.so", tmp_path)


def test_import_profile_is_summed_by_top_level_package():
    output = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:      1000 |       1000 |     botocore.exceptions",
            "import time:      2500 |       3500 |   botocore",
            "import time:       400 |        400 |   pydantic",
            "import time:        50 |       3950 | boto3",
        ]
    )
    assert cold_start.heaviest_packages(output) == [
        {"package": "botocore", "self_ms": 3.5},
        {"package": "pydantic", "self_ms": 0.4},
        {"package": "boto3", "self_ms": 0.1},
    ]


def test_package_size_is_read_from_the_files(tmp_path: Path):
    (tmp_path / "python" / "pkg").mkdir(parents=True)
    (tmp_path / "python" / "pkg" / "a.py").write_bytes(b"x" * 1500)
    (tmp_path / "python" / "mod.py").write_bytes(b"y" * 20)
    size = cold_start.directory_size(tmp_path)
    assert size["files"] == 2 and size["unzipped_bytes"] == 1520
    assert (size["source_files"], size["bytecode_files"]) == (2, 0)
    assert size["largest"][0] == {"entry": "pkg", "bytes": 1500}
    assert 0 < size["zipped_bytes"] < 1520 + 500


def test_template_names_a_logical_id_for_every_function_and_the_layer():
    ids = cold_start.logical_ids()
    for name in cold_start.FUNCTIONS:
        assert f"functions/{name}" in ids
    assert "layers/spotkeeper" in ids


def test_api_calls_are_counted_in_order_on_every_client_of_the_session():
    with mock_aws():
        session = boto3.session.Session(region_name=REGION)
        counter = CallCounter()
        session.events.register("before-parameter-build", counter)
        autoscaling, sns = session.client("autoscaling"), session.client("sns")
        autoscaling.describe_auto_scaling_groups()
        topic = sns.create_topic(Name="bench")["TopicArn"]
        sns.publish(TopicArn=topic, Message="hi")
    assert counter.calls == ["auto-scaling:DescribeAutoScalingGroups", "sns:CreateTopic", "sns:Publish"]
    assert calls_until_replacement(["auto-scaling:DescribeAutoScalingGroups", "auto-scaling:DetachInstances"]) == 2
    assert calls_until_replacement(counter.calls) is None


def _drill_report(launch_to_ready: float, outage: float) -> dict:
    """A drill --json report in the drill's shape, with numbers this test chose."""
    return {
        "request_interval_seconds": 2.0,
        "scenarios": {
            "interruption": {
                "clients": {
                    "via": "gateway",
                    "sent": 100,
                    "failed": 5,
                    "longest_outage_seconds": outage,
                    "recovered": True,
                },
                "facts": {"replacement_launch_to_ready_seconds": launch_to_ready},
                "duration": 400.0,
                "purchase_options": {},
                "checks": [{"name": "x", "passed": True}],
                "passed": True,
                "timeline": [
                    {"t": -60.0, "event": "i-0aaaaaaaaaaaaaaa1 launched (spot), Pending:Wait on hook"},
                    {"t": 30.0, "event": "i-0bbbbbbbbbbbbbbb2 launched (spot), Pending:Wait on hook"},
                    {"t": 150.0, "event": "i-0aaaaaaaaaaaaaaa1 reclaimed by Spot: EC2 terminated it"},
                ],
            },
            "capacity": {
                "clients": {"via": "gateway", "sent": 200, "failed": 0, "longest_outage_seconds": 2.0},
                "facts": {},
                "duration": 1000.0,
                "purchase_options": {},
                "checks": [],
                "passed": True,
                "timeline": [
                    {"t": 0.0, "event": "EIP now on i-0ccccccccccccccc3"},  # running before the window
                    {"t": 100.0, "event": "i-0ccccccccccccccc3 terminated (terminate hook CONTINUE)"},
                    {"t": 50.0, "event": "i-0ddddddddddddddd4 launched (on-demand), Pending:Wait on hook"},
                ],
            },
        },
    }


def test_failover_rows_and_targets_follow_the_drill_report():
    summary_ = failover.summarize({300.0: _drill_report(launch_to_ready=300.0, outage=185.0)})
    rows = {row["scenario"]: row for row in summary_["rows"]}
    assert rows["interruption"]["downtime_bound_seconds"] == 190.0  # max(0, 300 - 120) + 10
    assert rows["interruption"]["downtime_seconds"] == 185.0
    assert rows["capacity"]["downtime_seconds"] == 0.0  # no failed request: the gap is the request interval
    [verdict] = [t for t in targets.failover_targets(summary_, (300.0,)) if "scenario 1" in t.name]
    assert verdict.verdict == "PASS"
    late = failover.summarize({300.0: _drill_report(launch_to_ready=300.0, outage=260.0)})
    [verdict] = [t for t in targets.failover_targets(late, (300.0,)) if "scenario 1" in t.name]
    assert verdict.verdict == "MISS"
    missing = targets.failover_targets(late, (60.0,))
    assert {t.verdict for t in missing} == {"NOT MEASURED"}


def test_cost_comes_from_the_price_file_and_the_timelines(tmp_path: Path):
    prices = cost.load_prices(cost.PRICES_PATH)  # Spot from the price file, On-Demand from the product's table
    kind = prices["assumptions"]["chosen_instance_type"]
    spot, on_demand = (prices["ec2_linux_hourly"]["types"][kind][k] for k in ("spot_typical", "on_demand"))
    drill = {"reports": {"300": _drill_report(300.0, 185.0)}}
    result = cost.compute(drill, None, None, cost.CostConfig())
    interruption = result["scenarios"]["interruption"]
    # i-...1 from 0 to 150 s, i-...2 from 30 s to the end (400 s): 520 Spot instance-seconds in 400 s
    assert interruption["spot_instance_seconds"] == 520.0
    assert interruption["instances_usd_per_hour"] == pytest.approx(520.0 * spot / 400.0, abs=1e-4)
    capacity = result["scenarios"]["capacity"]
    assert (capacity["spot_instance_seconds"], capacity["on_demand_instance_seconds"]) == (100.0, 950.0)
    assert result["always_on_demand_usd_per_hour"] == on_demand
    per_request = result["per_request"]
    assert per_request["total_usd"] == pytest.approx(per_request["lambda_usd"] + per_request["api_gateway_usd"])
    assert interruption["request_path_usd_per_hour"] == pytest.approx(1800 * per_request["total_usd"], abs=1e-4)

    # Change the price file: the cost follows it
    prices["ec2_linux_hourly"]["types"][kind]["spot_typical"] = spot * 2
    changed = tmp_path / "prices.json"
    changed.write_text(json.dumps(prices))
    again = cost.compute(drill, None, None, cost.CostConfig(prices_path=changed))
    assert again["scenarios"]["interruption"]["instances_usd_per_hour"] == pytest.approx(
        2 * interruption["instances_usd_per_hour"], abs=1e-4
    )
    # A price file without dates is refused
    del prices["lambda_arm64"]["as_of"]
    changed.write_text(json.dumps(prices))
    with pytest.raises(cost.CostError, match="as_of"):
        cost.compute(drill, None, None, cost.CostConfig(prices_path=changed))


def test_report_prints_every_part_and_a_verdict_per_target():
    drill = {"reports": {"300": _drill_report(300.0, 185.0)}}
    fo = failover.summarize({300.0: drill["reports"]["300"]})
    fo["reports"] = drill["reports"]
    results = {
        "failover": fo,
        "cost": cost.compute(drill, None, None, cost.CostConfig()),
        "reaction": {
            "repeats": 1,
            "warning_to_replacement_calls": 2,
            "warning_calls_in_order": ["auto-scaling:DescribeAutoScalingGroups", "auto-scaling:DetachInstances"],
            "events": [
                {
                    "event": "spot-interruption-warning",
                    "function": "interruption",
                    "outcome": "replacement-started",
                    "wall_ms_median": 12.5,
                    "api_calls": 2,
                    "calls_until_replacement_requested": 2,
                }
            ],
        },
    }
    results["targets"] = [t.as_json() for t in targets.evaluate(results, (300.0,))]
    text = report.render(results)
    assert "Failover" in text and "Cost" in text and "Reaction" in text
    verdicts = {t["name"]: t["verdict"] for t in results["targets"]}
    assert verdicts["Spot warning -> replacement launch requested"] == "PASS"
    assert verdicts["cold start of gateway: run.sh start to first answer / a process importing boto3"] == "NOT MEASURED"
    assert verdicts["cold start of capacity: handler import / import boto3 (as Lambda runs it)"] == "NOT MEASURED"
    assert "DetachInstances" in text


def test_cost_refuses_a_timeline_it_cannot_read():
    report_ = _drill_report(300.0, 185.0)
    for entry in report_["scenarios"]["capacity"]["timeline"]:
        entry["event"] = "something else happened"
    with pytest.raises(cost.CostError, match="capacity"):
        cost.compute({"reports": {"300": report_}}, None, None, cost.CostConfig())


def test_failover_plays_the_modelled_launch_to_ready_as_the_drills_default(tmp_path: Path):
    modelled = failover.modelled_load_seconds()
    # The realistic time is one of the default loads, next to 60, 180 and 600 s
    assert failover.default_loads() == tuple(sorted({modelled, 60.0, 180.0, 600.0})) and modelled > 300
    # ...played as the drill's default (which reports the breakdown), the others through --load-seconds
    command = failover.drill_command(modelled, ("baseline",), tmp_path)
    assert not any(arg.startswith("--load-seconds") for arg in command)
    assert "--load-seconds=180" in failover.drill_command(180.0, ("baseline",), tmp_path)
    report = {**_drill_report(launch_to_ready=modelled, outage=modelled - 120), "launch_to_ready": {"source": "model"}}
    summary_ = failover.summarize({modelled: report, 180.0: _drill_report(launch_to_ready=180.0, outage=60.0)})
    sources = {(row["load_seconds"], row["load_source"]) for row in summary_["rows"]}
    assert sources == {(modelled, "model"), (180.0, "--load-seconds")}
    assert summary_["launch_to_ready"] == {"source": "model"}
