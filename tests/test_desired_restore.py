"""The desired capacity a terminate hook gives back when Spot took a warned replica before its replacement served,
with other replicas warned meanwhile (the hedged drill's both-warned scenario found the group scaling in a warned
replica that still served: the first reclaim restored the capacity from before both scale-outs)."""

from __future__ import annotations

from spotkeeper.group import Group, GroupInstance
from spotkeeper.logic.lifecycle import desired_without, replacing
from spotkeeper.records import InstanceRecord


def warned(instance_id: str, desired_before: int, **extra) -> InstanceRecord:
    return InstanceRecord(instance_id, doomed_at=1.0, replacement="scale-out", desired_before=desired_before, **extra)


def group(desired: int, **states: str) -> Group:
    return Group("g", desired, 2 * desired, instances=tuple(GroupInstance(i, s) for i, s in states.items()))


def test_one_replacement_alone_gives_back_what_it_asked():
    # N = 2, A warned: 2 -> 3; Spot takes A before its replacement serves
    now = group(3, A="Terminating:Wait", B="InService", R="Pending:Wait")
    assert desired_without("A", 2, [warned("A", 2)], now, replicas=2) == 2


def test_a_second_warned_replica_keeps_its_extra_capacity_whichever_leaves_first():
    # N = 2, A warned (2 -> 3), B warned within a minute (3 -> 4); both replacements loading
    records = [warned("A", 2), warned("B", 3)]
    # When Spot takes A first: B still serves and its replacement loads, so 3, not A's 2 (which scales in B or a
    # loading replacement)
    first = group(4, A="Terminating:Wait", B="InService", RA="Pending:Wait", RB="Pending:Wait")
    assert desired_without("A", 2, records, first, replicas=2) == 3
    # ...then B: nothing else under way, back to the replicas, 2 (B's desired_before, 3, counted A's extra: kept,
    # the group would run a third replica for good)
    second = group(3, B="Terminating:Wait", RA="Pending:Wait", RB="Pending:Wait")
    assert desired_without("B", 3, [warned("B", 3)], second, replicas=2) == 2
    assert desired_without("B", 3, records, second, replicas=2) == 2  # A is out of the group: B alone
    # Reverse order: B leaves first while A still serves
    reverse = group(4, A="InService", B="Terminating:Wait", RA="Pending:Wait", RB="Pending:Wait")
    assert desired_without("B", 3, records, reverse, replicas=2) == 3


def test_never_above_the_desired_capacity_now_and_retired_or_gone_ones_do_not_count():
    records = [warned("A", 2), warned("B", 3), warned("C", 3, retired=True)]
    now = group(2, A="Terminating:Wait", B="InService", C="InService")
    assert desired_without("A", 2, records, now, replicas=2) == 2  # 2 + B = 3, but the group asks only 2 now
    gone = group(4, A="Terminating:Wait", C="InService")  # B left the group already
    assert desired_without("A", 2, records, gone, replicas=2) == 2


def test_what_counts_as_a_replacement_under_way():
    assert replacing(warned("A", 1))
    assert replacing(InstanceRecord("A", at_risk_since=1.0, replacement="scale-out", desired_before=1))
    assert not replacing(warned("A", 1, retired=True))
    assert not replacing(InstanceRecord("A", doomed_at=1.0, replacement="detach", desired_before=1))
    assert not replacing(InstanceRecord("A", replacement="scale-out", desired_before=1))  # nothing wrong with it
