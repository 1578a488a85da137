"""Cold start: a fresh interpreter importing each function and building its clients, against ``import boto3``.

Every probe is a new process (``bench/cold_probe.py``) with a Lambda-like environment: the function's folder
first on sys.path (Lambda's task root), the shared layer next (``/opt/python``), the function's variables set,
X-Ray tracing on as the template deploys it (``Tracing: Active``). Probes of all targets are interleaved and
repeated; the median is reported, as a ratio to the median of a bare ``import boto3`` measured the same way.

Sizes are read from ``.aws-sam/build`` (``sam build`` is run when it is missing): unzipped bytes, the size of
the zip Lambda would get, and the largest top-level entries.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.servers import LAYER, ROOT
from bench.stats import median, ratio

FUNCTIONS = ("interruption", "lifecycle", "health", "capacity", "gateway", "authorizer")
CONTROL_FUNCTIONS = ("interruption", "lifecycle", "health", "capacity", "authorizer")
# Not targets, evidence: the gateway once its first request built the DynamoDB resource, and what turning
# the tracer's module patching off would save.
EXTRA_TARGETS = ("gateway-first-request", "interruption+notrace", "gateway+notrace")
PROBE = Path(__file__).resolve().parent / "cold_probe.py"
FUNCTIONS_DIR = ROOT / "functions"
BUILD_DIR = ROOT / ".aws-sam" / "build"

# The variables the template gives every control function (values shaped like the deployed ones).
FUNCTION_ENV = {
    "POWERTOOLS_SERVICE_NAME": "spotkeeper",
    "POWERTOOLS_METRICS_NAMESPACE": "Spotkeeper",
    "POWERTOOLS_LOG_LEVEL": "INFO",
    "GROUP_NAME": "spotkeeper-tgi",
    "EIP_ALLOCATION_ID": "eipalloc-0123456789abcdef0",
    "STATE_TABLE_NAME": "spotkeeper-state",
    "ALERT_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:spotkeeper-alerts",
    "MODEL_ID": "meta-llama/Llama-3.1-8B-Instruct",
    "TGI_PORT": "8080",
    "ENDPOINT_DOWN_ALARM_NAME": "spotkeeper-endpoint-down",
}
LAMBDA_ENV = {
    "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
}


# What the Lambda python3.13 runtime itself has on sys.path (/var/runtime): the AWS SDK and its dependencies.
RUNTIME_PACKAGES = frozenset({"boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six"})


class ColdStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class ColdStartConfig:
    targets: tuple[str, ...] = FUNCTIONS + EXTRA_TARGETS
    repeats: int = 7
    sizes: bool = True
    build_if_missing: bool = True
    import_profile: bool = True


def top_level_names(directory: Path) -> set[str]:
    """Importable top-level names in a built Lambda artifact (packages, modules, extension modules)."""
    names = set()
    for entry in directory.iterdir():
        if entry.name.endswith((".dist-info", ".egg-info", ".data")) or entry.name.startswith("."):
            continue
        if entry.is_dir():
            names.add(entry.name)
        elif entry.suffix in (".py", ".so", ".pyd"):
            names.add(entry.name.split(".")[0])
    return names


def deployed_packages(build_dir: Path = BUILD_DIR) -> dict[str, frozenset[str]] | None:
    """Per function folder: the top-level names Lambda could import (function + layer + runtime)."""
    ids = logical_ids()
    layer_id = ids.get("layers/spotkeeper")
    if layer_id is None or not (build_dir / layer_id / "python").is_dir():
        return None
    layer = top_level_names(build_dir / layer_id / "python")
    found = {}
    for name in FUNCTIONS:
        logical_id = ids.get(f"functions/{name}")
        if logical_id is None or not (build_dir / logical_id).is_dir():
            return None
        found[name] = frozenset(top_level_names(build_dir / logical_id) | layer | RUNTIME_PACKAGES)
    return found


def probe_env(target: str, deployed: dict[str, frozenset[str]] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("POWERTOOLS_", "AWS_"))}
    env.pop("PYTHONPATH", None)
    env.update(LAMBDA_ENV)
    env["PYTHONPATH"] = str(LAYER)
    base = target.split("+")[0]
    if target.endswith("+notrace"):
        env["POWERTOOLS_TRACE_DISABLED"] = "true"
    if not base.startswith("boto3"):
        folder = "gateway" if base.startswith("gateway") else base
        env.update(FUNCTION_ENV)
        env["AWS_LAMBDA_FUNCTION_NAME"] = f"spotkeeper-{folder}"
        env["LAMBDA_TASK_ROOT"] = str(FUNCTIONS_DIR / folder)
        if folder == "gateway":
            env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] = "512"
        if deployed is not None:
            env["BENCH_DEPLOYED_PACKAGES"] = ",".join(sorted(deployed[folder]))
    elif deployed is not None:
        env["BENCH_DEPLOYED_PACKAGES"] = ",".join(sorted(RUNTIME_PACKAGES))
    return env


def probe(target: str, import_time: bool = False, deployed: dict[str, frozenset[str]] | None = None) -> dict[str, Any]:
    command = [sys.executable, "-P"]
    if import_time:
        command += ["-X", "importtime"]
    command += [str(PROBE), target, str(FUNCTIONS_DIR)]
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603 - this interpreter running the bench's own probe
        command, env=probe_env(target, deployed), capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    wall = (time.perf_counter() - started) * 1000.0
    if done.returncode != 0:
        raise ColdStartError(f"cold probe {target} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith('{"target"')]
    if not lines:
        raise ColdStartError(f"cold probe {target} printed no result:\n{done.stdout[-1000:]}")
    result = json.loads(lines[-1])
    result["process_ms"] = round(wall, 3)
    if import_time:
        result["importtime"] = done.stderr
    return result


_IMPORT_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def heaviest_packages(importtime_output: str, top: int = 8) -> list[dict[str, Any]]:
    """Self time of every module (python -X importtime), summed by top-level package, largest first."""
    by_package: dict[str, int] = {}
    for line in importtime_output.splitlines():
        match = _IMPORT_LINE.match(line)
        if not match:
            continue
        package = match.group(4).split(".")[0]
        by_package[package] = by_package.get(package, 0) + int(match.group(1))
    ranked = sorted(by_package.items(), key=lambda item: item[1], reverse=True)[:top]
    return [{"package": name, "self_ms": round(us / 1000.0, 1)} for name, us in ranked]


def measure(
    config: ColdStartConfig, deployed: dict[str, frozenset[str]] | None = None, progress: Any = print
) -> dict[str, Any]:
    targets = ("boto3", *config.targets)
    runs: dict[str, list[dict[str, Any]]] = {target: [] for target in targets}
    probe("gateway", deployed=deployed)  # the first process pays for a cold page cache; not counted
    for repeat in range(config.repeats):
        progress(f"  cold start: round {repeat + 1}/{config.repeats}")
        order = targets if repeat % 2 == 0 else tuple(reversed(targets))
        for target in order:
            runs[target].append(probe(target, deployed=deployed))
    baseline_ms = median([r["total_ms"] for r in runs["boto3"]])
    results: dict[str, Any] = {}
    for target in targets:
        samples = runs[target]
        total = median([r["total_ms"] for r in samples])
        results[target] = {
            "total_ms": round(total, 1),
            "import_ms": round(median([r["import_ms"] for r in samples]), 1),
            "clients_ms": round(median([r["clients_ms"] for r in samples]), 1),
            "process_ms": round(median([r["process_ms"] for r in samples]), 1),
            "ratio_to_boto3": ratio(total, baseline_ms),
            "import_ratio_to_boto3": ratio(median([r["import_ms"] for r in samples]), baseline_ms),
            "modules": samples[-1]["modules"],
            "loaded": samples[-1]["loaded"],
            "samples_total_ms": [r["total_ms"] for r in samples],
        }
    results["boto3-clients"] = {"client_ms": probe("boto3-clients", deployed=deployed)["client_ms"]}
    if config.import_profile:
        progress("  cold start: import profiles (python -X importtime)")
        for target in ("boto3", *(t for t in config.targets if "+" not in t)):
            profile = probe(target, import_time=True, deployed=deployed)["importtime"]
            results[target]["heaviest_imports"] = heaviest_packages(profile)
    return {
        "only_deployed_packages": deployed is not None,
        "baseline": "a fresh interpreter's `import boto3` (median)",
        "baseline_ms": round(baseline_ms, 1),
        "repeats": config.repeats,
        "what": "import the handler module, then build its clients (control_deps(), capacity_deps(), "
        "the authorizer's table, the gateway app's lifespan); Lambda-like env, X-Ray tracing on",
        "targets": results,
    }


# --- package sizes -----------------------------------------------------------------------------------------
def logical_ids(template_path: Path = ROOT / "template.yaml") -> dict[str, str]:
    """Folder (functions/<name>, layers/<name>) -> logical id, from the template's CodeUri / ContentUri."""
    from spotkeeper_local.embedded_aws import load_sam_template

    template = load_sam_template(template_path)
    found: dict[str, str] = {}
    for logical_id, resource in template.get("Resources", {}).items():
        properties = resource.get("Properties", {}) or {}
        uri = properties.get("CodeUri") or properties.get("ContentUri")
        if isinstance(uri, str) and resource.get("Type", "").startswith("AWS::Serverless::"):
            found[uri.rstrip("/")] = logical_id
    return found


def sam_build() -> None:
    sam = ROOT / ".venv-sam" / "bin" / "sam"
    if not sam.exists():
        raise ColdStartError("sam build is needed for package sizes, and .venv-sam/bin/sam is missing: run make dev")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env.setdefault("SAM_CLI_TELEMETRY", "0")
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    done = subprocess.run(  # noqa: S603 - the project's own sam, as make build runs it
        [str(sam), "build", "--parallel"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise ColdStartError(f"sam build failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")


def directory_size(path: Path, zipped: bool = True) -> dict[str, Any]:
    files = [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    unzipped = sum(p.stat().st_size for p in files)
    entries: dict[str, int] = {}
    for p in files:
        top = p.relative_to(path).parts
        key = top[1] if top[0] == "python" and len(top) > 1 else top[0]
        entries[key] = entries.get(key, 0) + p.stat().st_size
    result: dict[str, Any] = {
        "files": len(files),
        "unzipped_bytes": unzipped,
        "largest": [{"entry": name, "bytes": size} for name, size in sorted(entries.items(), key=lambda i: -i[1])[:5]],
    }
    if zipped:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
            for p in sorted(files):
                archive.write(p, p.relative_to(path).as_posix())
        result["zipped_bytes"] = buffer.tell()
    return result


def package_sizes(config: ColdStartConfig, build_dir: Path = BUILD_DIR, progress: Any = print) -> dict[str, Any]:
    ids = logical_ids()
    wanted = {f"functions/{name}": name for name in FUNCTIONS} | {"layers/spotkeeper": "layer"}
    missing = [ids[uri] for uri in wanted if uri in ids and not (build_dir / ids[uri]).is_dir()]
    built_now = False
    if missing:
        if not config.build_if_missing:
            raise ColdStartError(f"{build_dir} lacks {missing}: run sam build")
        progress("  package sizes: running sam build")
        sam_build()
        built_now = True
    sizes: dict[str, Any] = {}
    for uri, name in wanted.items():
        logical_id = ids.get(uri)
        if logical_id is None:
            raise ColdStartError(f"template.yaml has no resource with CodeUri/ContentUri {uri}")
        sizes[name] = {"logical_id": logical_id, **directory_size(build_dir / logical_id)}
    return {"build_dir": str(build_dir.relative_to(ROOT)), "built_now": built_now, "artifacts": sizes}


def run(config: ColdStartConfig, progress: Any = print) -> dict[str, Any]:
    sizes: dict[str, Any] | None = None
    if config.sizes:
        try:
            sizes = package_sizes(config, progress=progress)
        except ColdStartError as error:
            # The timings do not need the sizes: they are measured with every installed package instead.
            sizes = {"error": str(error)}
    # With the built artifacts at hand, a probe may import only what Lambda would have.
    deployed = deployed_packages() if sizes is not None and "error" not in sizes else None
    result = measure(config, deployed, progress)
    if sizes is not None:
        result["sizes"] = sizes
    return result
