"""Launch-to-ready of a GPU replacement as a model: boot, image, weights, load and warm-up.

Every constant comes from ``data/launch_times.yaml`` with its public source; this module only combines them:

- boot: a constant (Deep Learning AMI on a GPU instance, to the start of user data);
- image: pulled from ghcr.io (through the internet gateway) or the stack's ECR pull-through cache (in region),
  then extracted onto Docker's data root (the NVMe /data when there is one, else the root volume) - whichever
  is slower bounds the phase; a baked AMI skips it;
- weights: from the Hugging Face Hub (internet gateway), from the stack's S3 copy (in region, parallel
  requests, then every chunk checked against the manifest's sha256) or baked into the AMI, written to /data
  (local NVMe or the root gp3 volume) - the slowest of source, instance network and disk write bounds the
  download;
- load and warm-up: the weights read back from /data at its read throughput (TGI's load is disk-bound) plus
  a constant for TGI's start, warm-up and CUDA graphs.

    python -m spotkeeper_local.launch_time                      # the template's default, every option
    python -m spotkeeper_local.launch_time --weights s3 --nvme --image baked --json

What it does not model: EBS lazy loading of a volume restored from a snapshot (a baked AMI's blocks come from
S3 on first read unless Fast Snapshot Restore is on), page-cache hits, CPU-bound layer decompression, and the
variance of the Hub's and ghcr.io's CDNs. The breakdown's `notes` say which of these apply.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml

DATA_PATH = Path(__file__).resolve().parent / "data" / "launch_times.yaml"
TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "template.yaml"
MIB = 1024 * 1024
MB = 1_000_000

WeightsSource = Literal["hub", "s3", "baked"]
ImageSource = Literal["ghcr", "ecr", "baked"]
Network = Literal["baseline", "burst"]


class LaunchModelError(ValueError):
    """An instance type, model or option the data file does not describe."""


@dataclass(frozen=True)
class LaunchOptions:
    weights: WeightsSource = "hub"
    image: ImageSource = "ghcr"
    # /data on the instance's local NVMe (only where the type has one) instead of the root gp3 volume.
    data_on_nvme: bool = False
    root_throughput_mibps: float | None = None  # None: the template's RootVolumeThroughput default
    network: Network = "baseline"

    def validate(self) -> None:
        if self.weights not in ("hub", "s3", "baked"):
            raise LaunchModelError(f"weights must be hub, s3 or baked, not {self.weights!r}")
        if self.image not in ("ghcr", "ecr", "baked"):
            raise LaunchModelError(f"image must be ghcr, ecr or baked, not {self.image!r}")
        if self.network not in ("baseline", "burst"):
            raise LaunchModelError(f"network must be baseline or burst, not {self.network!r}")


# The options the bench compares: today's user data, the issue-13 fast start, and a baked AMI on top.
PRESETS: dict[str, LaunchOptions] = {
    "default (Hub weights, ghcr image, gp3 default)": LaunchOptions(),
    "Hub weights, gp3 at 1000 MiB/s": LaunchOptions(root_throughput_mibps=1000),
    "S3 weights + NVMe /data": LaunchOptions(weights="s3", data_on_nvme=True),
    "S3 weights + NVMe + ECR image": LaunchOptions(weights="s3", data_on_nvme=True, image="ecr"),
    "baked image + S3 weights + NVMe": LaunchOptions(weights="s3", data_on_nvme=True, image="baked"),
}


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    detail: str


@dataclass(frozen=True)
class Breakdown:
    instance_type: str
    model: str
    options: LaunchOptions
    phases: tuple[Phase, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def total(self) -> float:
        return sum(p.seconds for p in self.phases)

    def seconds(self, phase: str) -> float:
        return next(p.seconds for p in self.phases if p.name == phase)

    def as_json(self) -> dict[str, Any]:
        return {
            "instance_type": self.instance_type,
            "model": self.model,
            "options": asdict(self.options),
            "phases": [asdict(p) for p in self.phases],
            "total_seconds": round(self.total, 1),
            "notes": list(self.notes),
        }

    def render(self) -> str:
        lines = [
            f"launch-to-ready of {self.model} on {self.instance_type}: {self.total:.0f} s ({self.total / 60:.1f} min)"
        ]
        for p in self.phases:
            lines.append(f"  {p.name:<16} {p.seconds:6.0f} s  {p.detail}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


@cache
def load_data(path: Path = DATA_PATH) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise LaunchModelError(f"{path} is not a mapping")
    return data


def _value(data: dict[str, Any], section: str, name: str) -> float:
    return float(data[section][name]["value"])


@cache
def _template_parameters(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    class _IgnoreTags(yaml.SafeLoader):
        pass

    _IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: None)
    return yaml.load(path.read_text(), Loader=_IgnoreTags)["Parameters"]  # noqa: S506 - SafeLoader subclass


def template_defaults(path: Path = TEMPLATE_PATH) -> tuple[str, str]:
    """(instance type, model id) the template deploys by default: the first InstanceTypes entry and ModelId."""
    parameters = _template_parameters(path)
    instance_type = str(parameters["InstanceTypes"]["Default"]).split(",")[0].strip()
    return instance_type, str(parameters["ModelId"]["Default"])


def template_launch_deadline(path: Path = TEMPLATE_PATH) -> float:
    """LaunchDeadlineSeconds's default: how long a launch may take before its hook ABANDONs it."""
    return float(_template_parameters(path)["LaunchDeadlineSeconds"]["Default"])


def template_root_throughput(path: Path = TEMPLATE_PATH) -> float:
    """The gp3 throughput (MiB/s) the template gives the root volume by default."""
    return float(_template_parameters(path)["RootVolumeThroughput"]["Default"])


def _network_mbps(spec: dict[str, Any], network: Network) -> float:
    gbps = spec["network_burst_gbps"] if network == "burst" else spec["network_baseline_gbps"]
    return float(gbps) * 1000 / 8


def _internet_mbps(data: dict[str, Any], spec: dict[str, Any], instance_mbps: float) -> float:
    floor = _value(data, "network", "internet_gateway_limit_gbps_below_32_vcpus") * 1000 / 8
    if spec["vcpus"] < 32:
        return min(instance_mbps, floor)
    return min(
        instance_mbps, max(floor, instance_mbps * _value(data, "network", "internet_gateway_share_from_32_vcpus"))
    )


def launch_to_ready(
    instance_type: str | None = None,
    model: str | None = None,
    options: LaunchOptions | None = None,
    data: dict[str, Any] | None = None,
) -> Breakdown:
    """The modelled launch-to-ready of `model` on `instance_type` (defaults: the template's) with `options`."""
    data = data if data is not None else load_data()
    default_type, default_model = template_defaults()
    instance_type = instance_type or default_type
    model = model or default_model
    options = options or LaunchOptions()
    options.validate()
    if instance_type not in data["instance_types"]:
        raise LaunchModelError(f"no data for instance type {instance_type!r}; add it to {DATA_PATH.name}")
    if model not in data["models"]:
        raise LaunchModelError(f"no data for model {model!r}; add its weight size to {DATA_PATH.name}")
    spec = data["instance_types"][instance_type]
    weights_bytes = float(data["models"][model]["weights_bytes"])
    notes: list[str] = []

    root_mibps = options.root_throughput_mibps or template_root_throughput()
    lowest, highest = (
        _value(data, "storage", "gp3_default_throughput_mibps"),
        _value(data, "storage", "gp3_max_throughput_mibps"),
    )
    if not lowest <= root_mibps <= highest:
        raise LaunchModelError(f"gp3 throughput must be {lowest:g}-{highest:g} MiB/s, not {root_mibps:g}")
    root_mbps = root_mibps * MIB / MB
    on_nvme = options.data_on_nvme and spec.get("nvme_gb", 0) > 0
    if options.data_on_nvme and not on_nvme:
        notes.append(f"{instance_type} has no local NVMe: /data stays on the root volume")
    data_write, data_read, data_name = (
        (_value(data, "storage", "nvme_write_mbps"), _value(data, "storage", "nvme_read_mbps"), "local NVMe")
        if on_nvme
        else (root_mbps, root_mbps, f"gp3 root ({root_mibps:g} MiB/s)")
    )
    instance_mbps = _network_mbps(spec, options.network)
    internet_mbps = _internet_mbps(data, spec, instance_mbps)
    in_region_mbps = instance_mbps * _value(data, "network", "in_region_share")

    phases = [Phase("boot", _value(data, "phases", "boot_seconds"), "Deep Learning AMI to user data")]

    if options.image == "baked":
        phases.append(Phase("image", 0.0, "already on the AMI"))
        notes.append(
            "baked AMI: a volume restored from its snapshot loads blocks lazily from S3 on first read; "
            "not modelled (enable Fast Snapshot Restore on the AMI's snapshot to make it true)"
        )
    else:
        compressed = _value(data, "image", "tgi_image_compressed_bytes")
        extracted = _value(data, "image", "tgi_image_extracted_bytes")
        if options.image == "ghcr":
            pull_mbps = min(_value(data, "sources", "ghcr_download_mbps"), internet_mbps)
            where = "ghcr.io via internet gateway"
        else:
            pull_mbps = in_region_mbps
            where = "ECR pull-through cache in region"
        # The user data puts Docker's data root on /data: on NVMe the layers are extracted there.
        extract_mbps, extract_to = (
            (data_write, data_name) if on_nvme else (root_mbps, f"gp3 root ({root_mibps:g} MiB/s)")
        )
        download = compressed / (pull_mbps * MB)
        extract = extracted / (extract_mbps * MB)
        # Layers download in parallel and extract as they arrive: the slower stream bounds the phase.
        phases.append(
            Phase(
                "image",
                max(download, extract),
                f"{compressed / 1e9:.1f} GB from {where} at {pull_mbps:.0f} MB/s ({download:.0f} s), "
                f"{extracted / 1e9:.1f} GB extracted to {extract_to} at {extract_mbps:.0f} MB/s ({extract:.0f} s)",
            )
        )

    if options.weights == "baked":
        phases.append(Phase("weights", 0.0, "already on the AMI"))
        data_read, data_name = root_mbps, f"gp3 root ({root_mibps:g} MiB/s, baked)"
    else:
        if options.weights == "hub":
            source_mbps = min(_value(data, "sources", "hub_download_mbps"), internet_mbps)
            where = "Hugging Face Hub"
        else:
            per_connection = _value(data, "sources", "s3_per_connection_mbps")
            source_mbps = min(per_connection * _value(data, "sources", "s3_concurrent_requests"), in_region_mbps)
            where = "S3 in region"
        rate = min(source_mbps, data_write)
        bound = "source" if source_mbps <= data_write else data_name
        download = weights_bytes / (rate * MB)
        detail = f"{weights_bytes / 1e9:.1f} GB from {where} to {data_name} at {rate:.0f} MB/s (bound: {bound})"
        verify = 0.0
        if options.weights == "s3":
            # Every chunk is checked against the manifest, one thread per vCPU.
            verify_mbps = _value(data, "verify", "sha256_per_core_mbps") * spec["vcpus"]
            verify = weights_bytes / (verify_mbps * MB)
            detail += f" + sha256 check at {verify_mbps:.0f} MB/s ({verify:.0f} s)"
        phases.append(Phase("weights", download + verify, detail))

    load = weights_bytes / (data_read * MB)
    warm = _value(data, "phases", "tgi_start_and_warmup_seconds")
    phases.append(
        Phase(
            "load+warmup",
            load + warm,
            f"{weights_bytes / 1e9:.1f} GB read from {data_name} at {data_read:.0f} MB/s ({load:.0f} s) "
            f"+ TGI start and warm-up {warm:.0f} s",
        )
    )
    return Breakdown(instance_type, model, options, tuple(phases), tuple(notes))


def failover_downtime(launch_to_ready_seconds: float, warning_seconds: float = 120.0) -> float:
    """Single-instance downtime when the replacement starts at the warning: what outlasts the warning."""
    return max(0.0, launch_to_ready_seconds - warning_seconds)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m spotkeeper_local.launch_time", description=__doc__.splitlines()[0])
    p.add_argument("--instance-type", help="default: the template's first InstanceTypes entry")
    p.add_argument("--model", help="default: the template's ModelId")
    p.add_argument("--weights", choices=["hub", "s3", "baked"], help="print only this option (else every preset)")
    p.add_argument("--image", choices=["ghcr", "ecr", "baked"], default="ghcr")
    p.add_argument("--nvme", action="store_true", help="/data on local NVMe")
    p.add_argument("--root-throughput", type=float, default=None, help="gp3 MiB/s (125-1000)")
    p.add_argument("--network", choices=["baseline", "burst"], default="baseline")
    p.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.weights:
        chosen = {
            "chosen": LaunchOptions(args.weights, args.image, args.nvme, args.root_throughput, args.network),
        }
    else:
        chosen = {name: replace(o, network=args.network) for name, o in PRESETS.items()}
    try:
        breakdowns = {name: launch_to_ready(args.instance_type, args.model, o) for name, o in chosen.items()}
    except LaunchModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({name: b.as_json() for name, b in breakdowns.items()}, indent=2))
        return 0
    for name, b in breakdowns.items():
        print(f"[{name}]  failover downtime at N=1 without warning lead: {failover_downtime(b.total):.0f} s")
        print(b.render())
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
