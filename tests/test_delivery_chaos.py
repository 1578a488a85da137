"""The drill's --chaos: EventBridge's at-least-once, unordered, late delivery and best-effort lifecycle events."""

from __future__ import annotations

import json
from pathlib import Path

from spotkeeper_local.delivery_chaos import COPIES, LIFECYCLE_TYPES, MAX_DELAY, DeliveryChaos

ROOT = Path(__file__).resolve().parents[1]
EVENTS = {
    name: json.loads((ROOT / "events" / f"{name}.json").read_text())
    for name in ("spot-interruption-warning", "lifecycle-launch", "lifecycle-terminate", "schedule")
}


def _play(seed: int, rounds: int = 200) -> tuple[DeliveryChaos, list[tuple[float, str, dict]]]:
    chaos = DeliveryChaos(seed)
    received: list[tuple[float, str, dict]] = []
    now = 1_000.0
    for index in range(rounds):
        name = list(EVENTS)[index % len(EVENTS)]
        event = {**EVENTS[name], "id": f"event-{index}"}
        chaos.arrive(now, "fn", event)
        now += 1.0
        received += [(now, function, e) for function, e in chaos.due(now)]
    now += MAX_DELAY + 1
    received += [(now, function, e) for function, e in chaos.due(now)]
    return chaos, received


def test_every_event_arrives_one_to_three_times_late_and_out_of_order():
    chaos, received = _play(seed=7)
    copies: dict[str, int] = {}
    for _, _, event in received:
        copies[event["id"]] = copies.get(event["id"], 0) + 1
    delivered = [d for d in chaos.deliveries if not d.lost]
    # Then each event that was not lost arrived as many times as its delays say, one to three times, same id
    assert {d.event_id: len(d.delays) for d in delivered} == copies
    assert set(copies.values()) == set(range(COPIES[0], COPIES[1] + 1))
    # ...each copy late by 0 to MAX_DELAY seconds, some by more than a minute
    delays = [delay for d in delivered for delay in d.delays]
    assert all(0.0 <= delay <= MAX_DELAY for delay in delays) and max(delays) > 60
    # ...and not in the order they were sent
    order = [int(event["id"].split("-")[1]) for _, _, event in received]
    assert order != sorted(order)
    assert chaos.waiting() == 0


def test_only_lifecycle_events_are_lost_and_some_are():
    chaos, _ = _play(seed=7)
    lost = [d for d in chaos.deliveries if d.lost]
    assert lost and all(d.detail_type in LIFECYCLE_TYPES for d in lost)
    assert all(not d.delays for d in lost)
    # ...and a lost event is found by what it was about; an interruption warning never is
    assert chaos.lost(lost[0].detail_type, lost[0].instance_id)
    warning = EVENTS["spot-interruption-warning"]
    assert not chaos.lost(warning["detail-type"], warning["detail"]["instance-id"])
    assert chaos.first_delay(warning["detail-type"], warning["detail"]["instance-id"]) is not None


def test_the_same_seed_plays_the_same_chaos_and_another_seed_does_not():
    first = [d.as_json() for d in _play(seed=3)[0].deliveries]
    again = [d.as_json() for d in _play(seed=3)[0].deliveries]
    other = [d.as_json() for d in _play(seed=4)[0].deliveries]
    assert first == again != other


def test_a_delivered_copy_is_its_own_object():
    chaos = DeliveryChaos(1)
    event = {**EVENTS["spot-interruption-warning"], "id": "x"}
    chaos.arrive(0.0, "fn", event)
    [(_, copy), *_] = chaos.due(MAX_DELAY + 1)
    copy["detail"]["instance-id"] = "changed by a handler"
    assert event["detail"]["instance-id"] != "changed by a handler"
