"""What a drill shows: per scenario a timeline, what the clients saw, where the EIP ended, the alerts sent.

Times are simulated seconds since the scenario's t = 0 (the moment the endpoint serves and the load starts).
The same data prints as text, as one JSON object (``--json``), and as a PNG of availability per scenario.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spotkeeper_local.load import RequestOutcome


class DrillError(RuntimeError):
    """The drill could not be played (not: spotkeeper failed a check; that is a failed check)."""


@dataclass(frozen=True)
class TimelineEntry:
    t: float
    event: str
    action: str = ""


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class ClientStats:
    via: str  # "gateway" or "elastic ip"
    sent: int
    succeeded: int
    failed: int
    longest_outage_seconds: float  # longest window with no successful request
    outage_from: float | None
    outage_to: float | None
    recovered: bool  # a request succeeded after the longest window


def client_stats(via: str, outcomes: list[RequestOutcome], start: float, end: float) -> ClientStats:
    """Counts, and the longest stretch of [start, end] in which no request succeeded."""
    successes = [o.at for o in outcomes if o.ok]
    marks = [start, *successes, end]
    longest, frm, to = 0.0, None, None
    for before, after in itertools.pairwise(marks):
        if after - before > longest:
            longest, frm, to = after - before, before, after
    return ClientStats(
        via=via,
        sent=len(outcomes),
        succeeded=len(successes),
        failed=len(outcomes) - len(successes),
        longest_outage_seconds=round(longest, 1),
        outage_from=frm,
        outage_to=to,
        recovered=bool(successes) and to is not None and to < end,
    )


@dataclass
class ScenarioResult:
    key: str
    title: str
    story: str
    clients: ClientStats
    eip_on: str | None  # instance id, or None when the EIP is associated with nothing
    eip_note: str  # e.g. "the replacement, serving" / "nothing (was on i-..., terminated)"
    serving_instance: str | None
    capacity_mode: str  # state table mode, or "spot (no spotkeeper)" for the baseline
    purchase_options: dict[str, str]  # group members at the end -> spot / on-demand
    alerts: list[dict[str, Any]]
    timeline: list[TimelineEntry]
    facts: dict[str, Any] = field(default_factory=dict)  # numbers the checks use (launch-to-ready, ...)
    alarms: list[dict[str, Any]] = field(default_factory=list)  # CloudWatch alarm transitions: t, alarm, from, to
    checks: list[Check] = field(default_factory=list)
    samples: list[RequestOutcome] = field(default_factory=list)
    duration: float = 0.0
    chart: str | None = None

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("samples")
        data["passed"] = self.passed
        data["requests"] = [[o.at, o.ok] for o in self.samples]
        return data


@dataclass
class DrillReport:
    load_seconds: float | list[float]  # one per scenario setup when they differ
    request_interval: float | list[float]
    scenarios: list[ScenarioResult]
    wall_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    # Where load_seconds comes from: the launch-to-ready model's breakdown (phases), or --load-seconds.
    launch_to_ready: dict[str, Any] = field(default_factory=dict)
    chaos: int | None = None  # the --chaos seed of the event delivery, if any

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.scenarios)

    def as_json(self) -> dict[str, Any]:
        return {
            "load_seconds": self.load_seconds,
            "launch_to_ready": self.launch_to_ready,
            "chaos_seed": self.chaos,
            "request_interval_seconds": self.request_interval,
            "wall_seconds": round(self.wall_seconds, 1),
            "passed": self.passed,
            "notes": self.notes,
            "scenarios": {s.key: s.as_json() for s in self.scenarios},
        }

    def to_json(self) -> str:
        return json.dumps(self.as_json(), indent=2, default=str)


EVENT_WIDTH = 60


def _fmt_t(t: float) -> str:
    return f"{t:+7.0f}s"


def _seconds(value: float | list[float]) -> str:
    return " or ".join(f"{v:g}" for v in value) if isinstance(value, list) else f"{value:g}"


def render_launch_to_ready(launch: dict[str, Any]) -> list[str]:
    """The launch-to-ready the drill plays, phase by phase when it comes from the model."""
    if not launch:
        return []
    if launch.get("source") != "model":
        return [
            f"launch-to-ready: {launch['seconds']:g} s (--load-seconds; the model says "
            f"{launch.get('model_total_seconds', 0):.0f} s for {launch.get('model')} on {launch.get('instance_type')})"
        ]
    lines = [
        f"launch-to-ready: {launch['seconds']:g} s, modelled for {launch['model']} on {launch['instance_type']} "
        "(the template's defaults; local/spotkeeper_local/data/launch_times.yaml)"
    ]
    for phase in launch.get("phases", []):
        lines.append(f"    {phase['name']:<12} {phase['seconds']:6.0f} s  {phase['detail']}")
    lines += [f"    note: {note}" for note in launch.get("notes", [])]
    return lines


def render_text(report: DrillReport) -> str:
    lines: list[str] = render_launch_to_ready(report.launch_to_ready)
    for scenario in report.scenarios:
        lines.append("")
        lines.append(f"=== {scenario.key}: {scenario.title}")
        lines.append(f"    {scenario.story}")
        lines.append("")
        lines.append(f"    {'time':>8}  {'event':<{EVENT_WIDTH}} action")
        for entry in scenario.timeline:
            event = entry.event if len(entry.event) <= EVENT_WIDTH else entry.event[: EVENT_WIDTH - 3] + "..."
            lines.append(f"    {_fmt_t(entry.t)}  {event:<{EVENT_WIDTH}} {entry.action}".rstrip())
        lines.append("")
        for check in scenario.checks:
            lines.append(f"    [{'ok' if check.passed else 'FAIL'}] {check.name}: {check.detail}")
        lines.extend(replica_chart(scenario.facts, scenario.duration))
        if scenario.chart:
            lines.append(f"    availability chart: {scenario.chart}")
    lines.append("")
    lines.append(summary_table(report))
    for note in report.notes:
        lines.append(f"note: {note}")
    verdict = "every check passed" if report.passed else "SOME CHECKS FAILED"
    lines.append(
        f"drill: {verdict}; launch-to-ready {_seconds(report.load_seconds)} s simulated, "
        + (f"event delivery chaos seed {report.chaos}, " if report.chaos is not None else "")
        + f"one request every {_seconds(report.request_interval)} s, {report.wall_seconds:.1f} s of wall time"
    )
    return "\n".join(lines)


LANE_MARKS = {"loading": "l", "ready": "R", "warned": "W", "gone": ".", "up, not in the ready set": "u"}
LANE_COLUMNS = 60


def state_at(changes: list[list[Any]], t: float) -> Any:
    """The value of a [t, value] change list at time t (None before its first change)."""
    value = None
    for since, new in changes:
        if since > t:
            break
        value = new
    return value


def replica_chart(facts: dict[str, Any], duration: float) -> list[str]:
    """Hedged replicas: each replica's state over the scenario, one character per column of time, and where the
    EIP was (the primary). Nothing for a scenario without replica lanes."""
    lanes: dict[str, list[list[Any]]] = facts.get("replica_states") or {}
    if not lanes or duration <= 0:
        return []
    step = duration / LANE_COLUMNS
    times = [i * step for i in range(LANE_COLUMNS)]
    names = sorted(lanes, key=lambda i: lanes[i][0][0])
    zones = facts.get("zones") or {}
    primary = facts.get("primary_changes") or []
    holders = [state_at(primary, t) for t in times]
    tags = {name: chr(ord("A") + index) if index < 26 else "?" for index, name in enumerate(names)}
    lines = [
        "",
        f"    replicas over time (one column = {step:.0f} s, t=0 to {duration:g} s; "
        "l loading, R ready, W warned, u up but not in the ready set, . gone):",
    ]
    rows = []
    for name in names:
        where = f" {zones[name]}" if zones.get(name) else ""
        rows.append(
            (f"{tags[name]} {name}{where}", "".join(LANE_MARKS.get(state_at(lanes[name], t) or "", " ") for t in times))
        )
    rows.append(("EIP on (a letter above, - nothing)", "".join(tags.get(h, "-") if h else "-" for h in holders)))
    width = max(len(label) for label, _ in rows)
    return lines + [f"    {label:<{width}} |{row}|" for label, row in rows]


def summary_table(report: DrillReport) -> str:
    header = (
        "scenario",
        "via",
        "sent",
        "ok",
        "failed",
        "longest no-success (s)",
        "EIP on",
        "capacity",
        "alerts",
    )
    rows = [header]
    for s in report.scenarios:
        alert_kinds: dict[str, int] = {}
        for alert in s.alerts:
            alert_kinds[alert["event"]] = alert_kinds.get(alert["event"], 0) + 1
        alerts = ", ".join(f"{k}x{v}" if v > 1 else k for k, v in alert_kinds.items()) or "none"
        rows.append(
            (
                s.key,
                s.clients.via,
                str(s.clients.sent),
                str(s.clients.succeeded),
                str(s.clients.failed),
                f"{s.clients.longest_outage_seconds:g}"
                + ("" if s.clients.recovered or not s.clients.failed else " (not recovered)"),
                s.eip_note,
                s.capacity_mode,
                alerts,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    out = []
    for index, row in enumerate(rows):
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_chart(scenario: ScenarioResult, directory: Path) -> Path:
    """Availability over simulated time: each request as a dot (served / failed), key events as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{scenario.key}.png"
    lanes = scenario.facts.get("replica_states") or {}
    if lanes:  # hedged replicas: a lane per replica under the requests
        fig, (ax, lanes_ax) = plt.subplots(
            2,
            1,
            figsize=(10, 2.8 + 0.35 * len(lanes)),
            dpi=100,
            sharex=True,
            gridspec_kw={"height_ratios": [2.8, 0.35 * len(lanes) + 0.4]},
        )
        _replica_lanes(lanes_ax, lanes, scenario.facts.get("primary_changes", []), scenario.duration)
    else:
        fig, ax = plt.subplots(figsize=(10, 2.8), dpi=100)
    served = [o.at for o in scenario.samples if o.ok]
    failed = [o.at for o in scenario.samples if not o.ok]
    eip_requests = scenario.facts.get("eip_requests") or []
    if eip_requests:  # clients of the Elastic IP, beside the gateway's
        ax.scatter(
            [t for t, ok in eip_requests if ok],
            [0.7] * sum(ok for _, ok in eip_requests),
            s=6,
            marker="|",
            color="tab:olive",
            label="EIP served",
        )
        ax.scatter(
            [t for t, ok in eip_requests if not ok],
            [0.3] * sum(not ok for _, ok in eip_requests),
            s=6,
            marker="|",
            color="tab:orange",
            label="EIP failed",
        )
    ax.scatter(served, [1] * len(served), s=6, color="tab:green", label=f"served ({len(served)})")
    ax.scatter(failed, [0] * len(failed), s=6, color="tab:red", label=f"failed ({len(failed)})")
    c = scenario.clients
    if c.outage_from is not None and c.outage_to is not None and c.longest_outage_seconds > 0:
        ax.axvspan(
            c.outage_from, c.outage_to, color="tab:red", alpha=0.12, label=f"no success {c.longest_outage_seconds:g} s"
        )
    modes = scenario.facts.get("mode_changes", [])
    for index, (since, mode) in enumerate(modes):
        until = modes[index + 1][0] if index + 1 < len(modes) else scenario.duration
        if mode == "on-demand" and until > max(since, 0):
            ax.axvspan(max(since, 0), until, color="tab:blue", alpha=0.08, label="on-demand")
    for index, (name, at) in enumerate(sorted(scenario.facts.get("marks", {}).items(), key=lambda m: m[1])):
        ax.axvline(at, color="grey", linestyle="--", linewidth=0.8)
        ax.text(at + 3, 1.22 + 0.17 * (index % 2), name, fontsize=7, ha="left", va="bottom", color="dimgrey")
    ax.set_xlim(left=0, right=max(scenario.duration, 1))
    ax.set_ylim(-0.5, 1.7)
    ax.set_yticks([0, 1], ["failed", "served"])
    if not lanes:
        ax.set_xlabel("simulated seconds")
    ax.set_title(f"{scenario.key}: {scenario.title} (via {c.via})", fontsize=10)
    ax.legend(loc="lower right", fontsize=7, ncols=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


REPLICA_COLOURS = {
    "loading": "tab:grey",
    "up, not in the ready set": "tab:cyan",
    "ready": "tab:green",
    "warned": "tab:orange",
    "gone": "white",
}


def _replica_lanes(ax: Any, lanes: dict[str, list[list[Any]]], primary: list[list[Any]], duration: float) -> None:
    """One bar per replica coloured by its state (loading / ready / warned / gone); a black line where it held
    the Elastic IP (the primary)."""
    names = sorted(lanes, key=lambda i: lanes[i][0][0])
    for row, instance_id in enumerate(names):
        changes = lanes[instance_id]
        for index, (since, state) in enumerate(changes):
            until = changes[index + 1][0] if index + 1 < len(changes) else duration
            start = max(since, 0.0)
            if until > start and state != "gone":
                ax.broken_barh([(start, until - start)], (row - 0.35, 0.7), color=REPLICA_COLOURS.get(state, "k"))
        for index, (since, holder) in enumerate(primary):
            until = primary[index + 1][0] if index + 1 < len(primary) else duration
            if holder == instance_id and until > max(since, 0.0):
                ax.plot([max(since, 0.0), until], [row, row], color="black", linewidth=2)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_ylim(-0.6, len(names) - 0.4)
    handles = [matplotlib_patch(colour, state) for state, colour in REPLICA_COLOURS.items() if state != "gone"]
    ax.legend(
        handles=[*handles, matplotlib_line("EIP (primary)")],
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=6,
        ncols=5,
        frameon=False,
    )
    ax.set_xlabel("simulated seconds")


def matplotlib_patch(colour: str, label: str) -> Any:
    from matplotlib.patches import Patch

    return Patch(color=colour, label=label)


def matplotlib_line(label: str) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], color="black", linewidth=2, label=label)
