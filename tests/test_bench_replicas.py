"""The hedged-replicas bench part: its cost ratio comes from the price table, its availability model adds up, and
its target can miss."""

from __future__ import annotations

import json

import pytest

from bench import replicas, report, targets
from bench.cost import PRICES_PATH, load_prices


def test_two_spot_replicas_against_two_on_demand_from_the_price_table():
    result = replicas.run(progress=lambda _: None)
    prices = load_prices(PRICES_PATH)["ec2_linux_hourly"]
    assert result["prices_as_of"] == prices["as_of"]
    for row in result["rows"]:
        listed = prices["types"][row["instance_type"]]
        assert row["two_spot_vs_two_on_demand"] == pytest.approx(listed["spot_typical"] / listed["on_demand"], abs=1e-3)
        assert row["n2_spot_usd_per_hour"] == pytest.approx(2 * listed["spot_typical"], abs=1e-4)
    [target] = targets.replicas_targets(result)
    assert target.verdict == "PASS" and target.limit == "<= 0.45"
    assert "SkyServe" in report.render({"replicas": result, "targets": []})


def test_the_target_misses_when_spot_is_dear(tmp_path):
    prices = load_prices(PRICES_PATH)
    chosen = prices["assumptions"]["chosen_instance_type"]
    prices["ec2_linux_hourly"]["types"][chosen]["spot_typical"] = (
        0.5 * prices["ec2_linux_hourly"]["types"][chosen]["on_demand"]
    )
    dear = tmp_path / "prices.json"
    dear.write_text(json.dumps(prices))
    [target] = targets.replicas_targets(replicas.run(progress=lambda _: None, prices_path=dear))
    assert target.verdict == "MISS" and target.measured == "0.5"
    assert targets.replicas_targets(None)[0].verdict == "NOT MEASURED"


def test_two_replicas_are_down_only_while_both_are_out():
    # One interruption an hour, a 600 s window: N = 1 is down 600 s/h; N = 2 only when the other one is taken
    # within the window (1/6 of the time) and then for half of it on average: 2 x 1/6 x 300 s = 100 s/h.
    assert replicas.downtime_seconds_per_hour(1, 1.0, 600.0) == pytest.approx(600.0)
    assert replicas.downtime_seconds_per_hour(2, 1.0, 600.0) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        replicas.downtime_seconds_per_hour(3, 1.0, 600.0)
    result = replicas.run(progress=lambda _: None)
    for row in result["availability"]:
        assert row["n2_availability"] >= row["n1_availability"]
        assert row["window_seconds"] == pytest.approx(max(0.0, row["launch_to_ready_seconds"] - 120.0), abs=0.1)
