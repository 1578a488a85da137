"""The launch-to-ready model: its data file cites every constant, and its phases follow the constants."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from spotkeeper_local import launch_time
from spotkeeper_local.launch_time import (
    PRESETS,
    LaunchModelError,
    LaunchOptions,
    failover_downtime,
    launch_to_ready,
    load_data,
    template_defaults,
)
from tests.cfn import load_template

URL = re.compile(r"^https://\S+$")
FASTEST = LaunchOptions(weights="s3", data_on_nvme=True, image="baked")


def _constants(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{section}.{name}", entry)
        for section in ("phases", "network", "sources", "verify", "image", "storage")
        for name, entry in data[section].items()
    ]


def test_every_constant_has_a_value_and_a_public_source() -> None:
    data = load_data()
    for name, entry in _constants(data):
        assert isinstance(entry["value"], int | float), name
        assert URL.match(entry["source"]), name
        assert entry.get("note"), name
    for name, spec in {**data["instance_types"], **data["models"]}.items():
        assert URL.match(spec["source"]), name
    assert URL.match(data["reference"]["source"])


def test_the_template_default_is_what_the_model_defaults_to() -> None:
    parameters = load_template()["Parameters"]
    assert template_defaults() == (
        parameters["InstanceTypes"]["Default"].split(",")[0],
        parameters["ModelId"]["Default"],
    )
    breakdown = launch_to_ready()
    assert (breakdown.instance_type, breakdown.model) == template_defaults()
    # and the root volume's throughput is the template's default, gp3's free baseline
    gp3 = load_data()["storage"]["gp3_default_throughput_mibps"]["value"]
    assert parameters["RootVolumeThroughput"]["Default"] == gp3
    assert f"gp3 root ({gp3:g} MiB/s)" in breakdown.phases[1].detail


def test_the_default_lands_in_the_range_users_report() -> None:
    # Given the template's default model and type, weights from the Hub, gp3 at its default throughput
    breakdown = launch_to_ready()
    low, high = load_data()["reference"]["ml_node_ready_minutes"]
    # Then the cited constants alone give the 5-8 minutes users report (karpenter #702)
    assert low * 60 <= breakdown.total <= high * 60
    assert [p.name for p in breakdown.phases] == ["boot", "image", "weights", "load+warmup"]
    assert breakdown.total == pytest.approx(sum(p.seconds for p in breakdown.phases))


def test_the_fastest_option_is_under_150_seconds_for_the_default_8b_on_g5_2xlarge() -> None:
    breakdown = launch_to_ready("g5.2xlarge", "meta-llama/Llama-3.1-8B-Instruct", FASTEST)
    assert breakdown.total <= 150
    assert failover_downtime(breakdown.total) < 40
    assert breakdown.seconds("image") == 0
    assert any("lazily" in note for note in breakdown.notes)  # what the number leaves out is said


def test_weights_phase_is_bound_by_the_slowest_of_source_network_and_disk() -> None:
    data = load_data()
    weights = data["models"][template_defaults()[1]]["weights_bytes"]  # the phases below use the default model
    gp3 = data["storage"]["gp3_default_throughput_mibps"]["value"] * 1024 * 1024
    # Hub to the default gp3 root: the volume's 125 MiB/s is slower than the Hub
    assert launch_to_ready().seconds("weights") == pytest.approx(weights / gp3)
    # S3 to NVMe on g5.2xlarge (8 vCPUs): the 5 Gbps baseline bounds the download, at burst (10 Gbps) the NVMe
    # write rate does; then every byte is hashed, one thread per vCPU
    verify = weights / (data["verify"]["sha256_per_core_mbps"]["value"] * 1e6 * 8)
    s3_nvme = LaunchOptions(weights="s3", data_on_nvme=True)
    baseline = launch_to_ready("g5.2xlarge", options=s3_nvme).seconds("weights")
    assert baseline == pytest.approx(weights / (5e9 / 8) + verify)
    burst = launch_to_ready("g5.2xlarge", options=LaunchOptions(weights="s3", data_on_nvme=True, network="burst"))
    nvme_write = data["storage"]["nvme_write_mbps"]["value"] * 1e6
    assert burst.seconds("weights") == pytest.approx(weights / min(10e9 / 8, nvme_write) + verify)


def test_the_internet_gateway_caps_hub_downloads_but_not_s3() -> None:
    # Given a data file where the Hub and the disks are infinitely fast
    data = copy.deepcopy(load_data())
    data["sources"]["hub_download_mbps"]["value"] = 1e9
    data["storage"]["nvme_write_mbps"]["value"] = 1e9
    data["sources"]["s3_per_connection_mbps"]["value"] = 1e9
    weights = data["models"]["meta-llama/Llama-3.1-70B-Instruct"]["weights_bytes"]
    model = "meta-llama/Llama-3.1-70B-Instruct"

    def seconds(instance_type: str, source: str) -> float:
        options = LaunchOptions(weights=source, data_on_nvme=True)  # type: ignore[arg-type]
        return launch_to_ready(instance_type, model, options, data=data).seconds("weights")

    # Below 32 vCPUs the gateway allows 5 Gbps; from 32 vCPUs half the instance's bandwidth (40 -> 20 Gbps)
    assert seconds("g5.2xlarge", "hub") == pytest.approx(weights / (5e9 / 8))
    assert seconds("g5.12xlarge", "hub") == pytest.approx(weights / (20e9 / 8))
    # while S3 in the region gets the whole instance bandwidth (then 48 vCPUs hash the copy)
    verify = weights / (data["verify"]["sha256_per_core_mbps"]["value"] * 1e6 * 48)
    assert seconds("g5.12xlarge", "s3") == pytest.approx(weights / (40e9 / 8) + verify)


def test_more_gp3_throughput_never_makes_a_launch_slower() -> None:
    totals = [launch_to_ready(options=LaunchOptions(root_throughput_mibps=t)).total for t in (125, 250, 500, 1000)]
    assert totals == sorted(totals, reverse=True)
    assert totals[0] > totals[-1]


def test_nvme_requested_on_a_type_without_one_keeps_the_root_volume_and_says_so() -> None:
    data = copy.deepcopy(load_data())
    data["instance_types"]["g5.2xlarge"]["nvme_gb"] = 0
    with_nvme = launch_to_ready("g5.2xlarge", options=LaunchOptions(data_on_nvme=True), data=data)
    without = launch_to_ready("g5.2xlarge", options=LaunchOptions(), data=data)
    assert with_nvme.total == without.total
    assert any("no local NVMe" in note for note in with_nvme.notes)


@pytest.mark.parametrize(
    ("instance_type", "model", "options", "message"),
    [
        ("p9.mega", None, None, "instance type"),
        (None, "someone/unknown-model", None, "model"),
        (None, None, LaunchOptions(root_throughput_mibps=2001), "gp3 throughput"),
        (None, None, LaunchOptions(weights="ftp"), "weights"),  # type: ignore[arg-type]
    ],
)
def test_unknown_inputs_are_refused(instance_type: Any, model: Any, options: Any, message: str) -> None:
    with pytest.raises(LaunchModelError, match=message):
        launch_to_ready(instance_type, model, options)


def test_failover_downtime_is_what_outlasts_the_warning() -> None:
    assert failover_downtime(464) == 344
    assert failover_downtime(100) == 0
    assert failover_downtime(200, warning_seconds=0) == 200


def test_every_preset_orders_as_the_bench_table_claims() -> None:
    totals = [launch_to_ready(options=o).total for o in PRESETS.values()]
    assert totals[0] == max(totals)  # the default is the slowest
    assert totals[-1] == min(totals)  # the baked image is the fastest


def test_cli_prints_the_breakdown_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert launch_time.main(["--json", "--weights", "s3", "--nvme"]) == 0
    printed = json.loads(capsys.readouterr().out)["chosen"]
    assert [p["name"] for p in printed["phases"]] == ["boot", "image", "weights", "load+warmup"]
    assert printed["total_seconds"] == pytest.approx(sum(p["seconds"] for p in printed["phases"]), abs=0.1)
    assert launch_time.main(["--instance-type", "p9.mega", "--weights", "hub"]) == 2


def test_the_bench_table_has_every_option_and_its_n1_downtime() -> None:
    from bench import launch, targets

    result = launch.run(progress=lambda _line: None)
    assert [r["option"] for r in result["rows"]] == list(PRESETS)
    for row in result["rows"]:
        assert row["downtime_n1_seconds"] == pytest.approx(max(0.0, row["total_seconds"] - 120), abs=0.1)
    rendered = launch.section(result)
    assert all(name in rendered for name in PRESETS)
    (target,) = targets.launch_targets(result)
    assert target.verdict == ("PASS" if min(r["total_seconds"] for r in result["rows"]) <= 150 else "MISS")
    assert targets.launch_targets(None)[0].verdict == "NOT MEASURED"
