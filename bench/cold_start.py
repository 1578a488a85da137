"""Cold start as Lambda runs it: ``sam build``'s artifacts, read-only, in Lambda's path order, against ``import boto3``.

A Lambda-like file system is made in a temporary folder from ``.aws-sam/build`` (``sam build`` is run when it
is missing):

- ``task/<function>`` is the function's built folder (``/var/task``), ``opt/python`` the layer's
  (``/opt/python``), both copied as built: whatever bytecode the build ships, and nothing more;
- ``runtime`` stands for the python3.13 runtime's site-packages: boto3, botocore and their dependencies copied
  from this machine's environment and compiled, as the runtime image ships them;
- native extensions built for the deployed architecture (arm64) are swapped for this machine's build of the
  same distribution and version (``pip install --no-deps --platform <this machine>``), so they can load here;
- everything is then made read-only and every probe runs with ``-B``: as in Lambda, no ``.pyc`` is written,
  so a module shipped without bytecode is compiled again at every cold start. The bench checks afterwards that
  no bytecode appeared.

Each control function is a fresh ``python -I -S -B bench/cold_probe.py`` importing its handler module with
``sys.path`` in Lambda's order (task root, layer, standard library, runtime); the baseline is the same
interpreter importing boto3 from the runtime alone. Targets are interleaved and repeated; medians are reported.
The gateway is timed the way its cold start happens: from starting ``functions/gateway/run.sh`` (what the
Lambda Web Adapter runs) to the first answered request (its readiness path), against a fresh process that
imports boto3 and says so.

Sizes are read from ``.aws-sam/build``: unzipped bytes, the size of the zip Lambda would get, the largest
top-level entries, and whether the artifact ships bytecode.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from bench.servers import ROOT, free_port
from bench.stats import median, ratio

FUNCTIONS = ("interruption", "lifecycle", "health", "capacity", "gateway", "authorizer")
CONTROL_FUNCTIONS = ("interruption", "lifecycle", "health", "capacity", "authorizer")
PROBE = Path(__file__).resolve().parent / "cold_probe.py"
FUNCTIONS_DIR = ROOT / "functions"
BUILD_DIR = ROOT / ".aws-sam" / "build"
LAYER_URI = "layers/spotkeeper"

# What the Lambda python3.13 runtime itself brings (/var/lang/lib/python3.13/site-packages): the AWS SDK and
# its dependencies, by import name.
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")

# The variables the template gives every function (values shaped like the deployed ones).
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
    "LANG": "en_US.UTF-8",
    "TZ": ":UTC",
}
GATEWAY_READY_PATH = "/gateway/ping"


class ColdStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class ColdStartConfig:
    targets: tuple[str, ...] = FUNCTIONS
    repeats: int = 7
    sizes: bool = True
    build_if_missing: bool = True
    import_profile: bool = True
    build_dir: Path = BUILD_DIR


@dataclass
class LambdaFiles:
    """The Lambda-like file system the probes import from (see the module docstring)."""

    root: Path
    layer: Path
    runtime: Path
    tasks: dict[str, Path] = field(default_factory=dict)
    python: str = ""
    swapped_extensions: list[str] = field(default_factory=list)

    def bytecode_files(self) -> int:
        return sum(1 for _ in self.root.rglob("*.pyc"))


# --- the template and the build ----------------------------------------------------------------------------
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
        raise ColdStartError("sam build is needed, and .venv-sam/bin/sam is missing: run make dev")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env.setdefault("SAM_CLI_TELEMETRY", "0")
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    done = subprocess.run(  # noqa: S603 - the project's own sam, as make build runs it
        [str(sam), "build", "--parallel"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise ColdStartError(f"sam build failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")


def built_artifacts(config: ColdStartConfig, progress: Any = print) -> tuple[dict[str, Path], bool]:
    """name ("layer" or a function folder) -> its folder in the build; runs sam build when one is missing."""
    ids = logical_ids()
    wanted = {f"functions/{name}": name for name in FUNCTIONS} | {LAYER_URI: "layer"}
    unknown = [uri for uri in wanted if uri not in ids]
    if unknown:
        raise ColdStartError(f"template.yaml has no resource with CodeUri/ContentUri {unknown}")
    folders = {name: config.build_dir / ids[uri] for uri, name in wanted.items()}
    built_now = False
    if any(not folder.is_dir() for folder in folders.values()):
        if not config.build_if_missing:
            raise ColdStartError(f"{config.build_dir} lacks {sorted(n for n, f in folders.items() if not f.is_dir())}")
        progress("  cold start: running sam build")
        sam_build()
        built_now = True
    return folders, built_now


# --- the Lambda-like file system ---------------------------------------------------------------------------
def base_python() -> str:
    """The Python 3.13 install this bench runs on, outside any virtualenv (so none of its packages leak in)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return str(Path(base).resolve())


def _host_platform_tag() -> str:
    return f"manylinux2014_{platform.machine()}"


def _owner(extension: Path, root: Path) -> tuple[str, str]:
    """The distribution (name, version) whose RECORD lists ``extension``."""
    relative = extension.relative_to(root).as_posix()
    for record in root.glob("*.dist-info/RECORD"):
        if any(line.split(",", 1)[0] == relative for line in record.read_text().splitlines()):
            name, version = record.parent.name.removesuffix(".dist-info").rsplit("-", 1)
            return name, version
    raise ColdStartError(f"no .dist-info/RECORD in {root} lists {relative}")


def swap_foreign_extensions(root: Path, scratch: Path) -> list[str]:
    """Replace extension modules built for another architecture with this machine's build of the same version.

    pip is the bench's own (its virtualenv always has one); only the wheels' files are used.
    """
    suffix = sysconfig.get_config_var("EXT_SUFFIX")  # e.g. .cpython-313-x86_64-linux-gnu.so
    foreign = [p for p in root.rglob("*.so") if not p.name.endswith(suffix) and ".cpython-" in p.name]
    if not foreign:
        return []
    owners = sorted({_owner(p, root) for p in foreign})
    target = scratch / f"host-{root.parent.name}-{root.name}"
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-compile",
        "--root-user-action=ignore",
    ]
    command += ["--disable-pip-version-check", "--only-binary=:all:", "--implementation", "cp"]
    command += ["--python-version", "3.13", "--platform", _host_platform_tag(), "--target", str(target)]
    command += [f"{name}=={version}" for name, version in owners]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)  # noqa: S603 - pip, pinned names
    if done.returncode != 0:
        raise ColdStartError(f"could not fetch this machine's build of {owners}:\n{done.stderr[-1500:]}")
    swapped = []
    for extension in foreign:
        module = extension.name.split(".", 1)[0]
        folder = target / extension.parent.relative_to(root)
        counterpart = folder / f"{module}{suffix}"
        if not counterpart.is_file():
            raise ColdStartError(f"this machine's build has no counterpart of {extension.name} in {folder}")
        extension.unlink()
        shutil.copy2(counterpart, extension.parent / counterpart.name)
        swapped.append(extension.relative_to(root).as_posix())
    return swapped


def runtime_site(destination: Path, python: str) -> Path:
    """The runtime's SDK: boto3, botocore and their dependencies from this environment, compiled like the runtime's."""
    destination.mkdir(parents=True)
    for name in RUNTIME_PACKAGES:
        spec = find_spec(name)
        if spec is None or spec.origin is None:
            raise ColdStartError(f"{name} is not installed here: run make dev")
        origin = Path(spec.origin)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        if origin.name == "__init__.py":
            shutil.copytree(origin.parent, destination / name, ignore=ignore)
        else:
            shutil.copy2(origin, destination / origin.name)
    done = subprocess.run(  # noqa: S603 - the stdlib's compileall on our copy
        [python, "-m", "compileall", "-q", "-j", "0", str(destination)], capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise ColdStartError(f"could not compile the runtime's SDK:\n{done.stdout[-1500:]}")
    return destination


def _read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            mode = path.stat().st_mode
            path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def lambda_files(artifacts: dict[str, Path], root: Path, progress: Any = print) -> LambdaFiles:
    python = base_python()
    progress("  cold start: copying the build into a Lambda-like, read-only file system")
    layer_source = artifacts["layer"] / "python"
    if not layer_source.is_dir():
        raise ColdStartError(f"{artifacts['layer']} has no python/ folder: not a Python layer")
    files = LambdaFiles(root=root, layer=root / "opt" / "python", runtime=root / "runtime", python=python)
    shutil.copytree(layer_source, files.layer, symlinks=True)
    files.swapped_extensions += swap_foreign_extensions(files.layer, root.parent)
    for name in FUNCTIONS:
        task = root / "task" / name
        shutil.copytree(artifacts[name], task, symlinks=True)
        files.swapped_extensions += [f"{name}/{p}" for p in swap_foreign_extensions(task, root.parent)]
        files.tasks[name] = task
    runtime_site(files.runtime, python)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(python)  # run.sh's `python`, as the runtime's PATH resolves it
    _read_only(root)
    return files


# --- probes ------------------------------------------------------------------------------------------------
def function_env(name: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("POWERTOOLS_", "AWS_", "PYTHON"))}
    env.update(LAMBDA_ENV)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if name.startswith("boto3"):
        return env
    env.update(FUNCTION_ENV)
    env["AWS_LAMBDA_FUNCTION_NAME"] = f"spotkeeper-{name}"
    if name == "gateway":
        env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] = "512"
    return env


def probe(target: str, files: LambdaFiles, import_time: bool = False) -> dict[str, Any]:
    task = files.tasks.get(target, files.root / "task")
    command = [files.python, "-I", "-S", "-B"]
    if import_time:
        command += ["-X", "importtime"]
    command += [str(PROBE), target, str(task), str(files.layer), str(files.runtime)]
    env = function_env(target)
    env["LAMBDA_TASK_ROOT"] = str(task)
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603 - the base interpreter running the bench's own probe
        command, env=env, capture_output=True, text=True, timeout=120, cwd=task
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


def _reap(process: subprocess.Popen[Any]) -> float:
    """Wait for ``process`` and return the CPU milliseconds (user + system) it used."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return (usage.ru_utime + usage.ru_stime) * 1000.0


def boto3_process(files: LambdaFiles) -> tuple[float, float]:
    """Milliseconds from starting a fresh interpreter to its saying ``import boto3`` is done; its CPU ms."""
    code = f"import sys; sys.path.append({str(files.runtime)!r}); import boto3; print('ready', flush=True)"
    started = time.perf_counter()
    process = subprocess.Popen(  # noqa: S603 - the base interpreter, fixed code
        [files.python, "-B", "-c", code],
        env=function_env("boto3"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=files.root,
    )
    line = process.stdout.readline() if process.stdout else ""
    ready = (time.perf_counter() - started) * 1000.0
    cpu = _reap(process)
    if line.strip() != "ready":
        raise ColdStartError(f"the boto3 process failed ({process.returncode})")
    return ready, cpu


def _answers(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", GATEWAY_READY_PATH)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def gateway_start(files: LambdaFiles, timeout: float = 60.0) -> tuple[float, float]:
    """Milliseconds from starting run.sh (as the Lambda Web Adapter does) to the first answered request.

    Also the CPU milliseconds the process used, up to its stop right after that answer.
    """
    task = files.tasks["gateway"]
    port = free_port()
    env = function_env("gateway")
    env.update(
        LAMBDA_TASK_ROOT=str(task),
        PORT=str(port),
        # Lambda's PATH starts with the runtime's bin; /opt/python does not exist here, the layer is passed on.
        PATH=os.pathsep.join((str(files.root / "bin"), "/usr/bin", "/bin")),
        PYTHONPATH=os.pathsep.join((str(files.layer), str(files.runtime))),
    )
    started = time.perf_counter()
    process = subprocess.Popen(  # noqa: S603 - bash running the built run.sh of this repository
        [shutil.which("bash") or "/bin/bash", str(task / "run.sh")],
        env=env,
        cwd=task,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ready = None
    try:
        while time.perf_counter() - started < timeout:
            if process.poll() is not None:
                err = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise ColdStartError(f"run.sh exited with {process.returncode}:\n{err[-2000:]}")
            if _answers(port):
                ready = (time.perf_counter() - started) * 1000.0
                break
            time.sleep(0.002)
        else:
            raise ColdStartError(f"the gateway did not answer {GATEWAY_READY_PATH} within {timeout:g} s")
    finally:
        if process.returncode is None:
            process.terminate()
            # stderr is not read past this point: it must not fill up and block the shutdown.
            if process.stderr:
                process.stderr.close()
            cpu = _reap(process)
    return ready, cpu


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


def _summary(samples: list[dict[str, Any]], baseline: dict[str, float]) -> dict[str, Any]:
    imported = median([r["import_ms"] for r in samples])
    cpu = median([r["import_cpu_ms"] for r in samples])
    total = median([r["total_ms"] for r in samples])
    last = samples[-1]
    return {
        "import_ms": round(imported, 1),
        "import_cpu_ms": round(cpu, 1),
        "clients_ms": round(median([r["clients_ms"] for r in samples]), 1),
        "total_ms": round(total, 1),
        "process_ms": round(median([r["process_ms"] for r in samples]), 1),
        "import_ratio_to_boto3": ratio(imported, baseline["wall"]),
        "import_cpu_ratio_to_boto3": ratio(cpu, baseline["cpu"]),
        "total_ratio_to_boto3": ratio(total, baseline["wall"]),
        "modules": last["modules"],
        "compiled": last["compiled"],
        "botocore_from": last["botocore_from"],
        "loaded": last["loaded"],
        "samples_import_ms": [r["import_ms"] for r in samples],
    }


def measure(config: ColdStartConfig, files: LambdaFiles, progress: Any = print) -> dict[str, Any]:
    targets = ("boto3", *config.targets)
    runs: dict[str, list[dict[str, Any]]] = {target: [] for target in targets}
    processes: dict[str, list[tuple[float, float]]] = {"boto3": [], "gateway": []}
    bytecode_before = files.bytecode_files()
    probe("boto3", files)  # the first process pays for a cold page cache; not counted
    for repeat in range(config.repeats):
        progress(f"  cold start: round {repeat + 1}/{config.repeats}")
        order = targets if repeat % 2 == 0 else tuple(reversed(targets))
        for target in order:
            runs[target].append(probe(target, files))
        processes["boto3"].append(boto3_process(files))
        if "gateway" in config.targets:
            processes["gateway"].append(gateway_start(files))
    if files.bytecode_files() != bytecode_before:
        raise ColdStartError("a probe wrote bytecode into the read-only file system: the timings are not Lambda's")
    baseline = {
        "wall": median([r["import_ms"] for r in runs["boto3"]]),
        "cpu": median([r["import_cpu_ms"] for r in runs["boto3"]]),
    }
    results: dict[str, Any] = {target: _summary(runs[target], baseline) for target in targets}
    results["boto3-clients"] = {"client_ms": probe("boto3-clients", files)["client_ms"]}
    gateway: dict[str, Any] | None = None
    if processes["gateway"]:
        boto3_wall = median([wall for wall, _ in processes["boto3"]])
        boto3_cpu = median([cpu for _, cpu in processes["boto3"]])
        ready = median([wall for wall, _ in processes["gateway"]])
        ready_cpu = median([cpu for _, cpu in processes["gateway"]])
        gateway = {
            "ready_ms": round(ready, 1),
            "cpu_ms": round(ready_cpu, 1),
            "boto3_process_ms": round(boto3_wall, 1),
            "boto3_process_cpu_ms": round(boto3_cpu, 1),
            "ratio_to_boto3_process": ratio(ready, boto3_wall),
            "cpu_ratio_to_boto3_process": ratio(ready_cpu, boto3_cpu),
            "samples_ready_ms": [round(wall, 1) for wall, _ in processes["gateway"]],
        }
    if config.import_profile:
        progress("  cold start: import profiles (python -X importtime)")
        for target in targets:
            profile = probe(target, files, import_time=True)["importtime"]
            results[target]["heaviest_imports"] = heaviest_packages(profile)
    return {
        "baseline": "a fresh interpreter's `import boto3` from the runtime's precompiled SDK (median)",
        "baseline_ms": round(baseline["wall"], 1),
        "baseline_cpu_ms": round(baseline["cpu"], 1),
        "repeats": config.repeats,
        "python": files.python,
        "swapped_extensions": files.swapped_extensions,
        "what": "import the handler module from sam build's artifacts (read-only, no .pyc written, sys.path in "
        "Lambda's order), then build its clients; the gateway: run.sh start to the first answered request",
        "targets": results,
        "gateway_process": gateway,
    }


# --- package sizes -----------------------------------------------------------------------------------------
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
        "bytecode_files": sum(1 for p in files if p.suffix == ".pyc"),
        "source_files": sum(1 for p in files if p.suffix == ".py"),
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


def package_sizes(artifacts: dict[str, Path], build_dir: Path = BUILD_DIR) -> dict[str, Any]:
    sizes = {name: {"logical_id": folder.name, **directory_size(folder)} for name, folder in artifacts.items()}
    try:
        shown = str(build_dir.relative_to(ROOT))
    except ValueError:
        shown = str(build_dir)
    return {"build_dir": shown, "artifacts": sizes}


def run(config: ColdStartConfig, progress: Any = print) -> dict[str, Any]:
    artifacts, built_now = built_artifacts(config, progress)
    with tempfile.TemporaryDirectory(prefix="spotkeeper-cold-") as scratch:
        root = Path(scratch) / "lambda"
        try:
            files = lambda_files(artifacts, root, progress)
            result = measure(config, files, progress)
        finally:
            if root.exists():
                _writable(root)
    result["built_now"] = built_now
    if config.sizes:
        result["sizes"] = package_sizes(artifacts, config.build_dir)
    return result
