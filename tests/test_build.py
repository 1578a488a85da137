"""What `sam build` (lambda.mk) puts in .aws-sam/build: bytecode Python accepts as is, and no second AWS SDK.

Lambda mounts a function's code and its layers read-only, so Python cannot write a .pyc there: a module shipped
without bytecode is compiled again at every cold start. The runtime's own boto3/botocore is precompiled; a copy
in the layer would shadow it, uncompiled. These tests read the build `make test` runs before pytest.
"""

from __future__ import annotations

import importlib.util
import marshal
import re
import struct
from collections.abc import Iterator
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest

from spotkeeper_local.embedded_aws import load_sam_template

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / ".aws-sam" / "build"
LAMBDA_MK = ROOT / "lambda.mk"
# What the python3.13 runtime ships itself (import names and distribution names).
RUNTIME_SDK = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")
RUNTIME_SDK_DISTS = ("boto3", "botocore", "s3transfer", "jmespath", "python_dateutil", "urllib3", "six")
# The pyc flags word (PEP 552): bit 0 set = hash-based, bit 1 clear = never checked against the source.
UNCHECKED_HASH = 0b01
ARCH_SUFFIX = {"arm64": "aarch64", "x86_64": "x86_64"}


def _resources() -> dict[str, dict]:
    template = load_sam_template()
    return {
        logical_id: resource
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] in ("AWS::Serverless::Function", "AWS::Serverless::LayerVersion")
    }


def _code_root(logical_id: str, resource: dict) -> Path:
    """Where Lambda finds the artifact's Python: /var/task for a function, /opt/python for a layer."""
    folder = BUILD / logical_id
    return folder / "python" if resource["Type"] == "AWS::Serverless::LayerVersion" else folder


@pytest.fixture(scope="module")
def artifacts() -> dict[str, Path]:
    found = {logical_id: _code_root(logical_id, resource) for logical_id, resource in _resources().items()}
    missing = sorted(logical_id for logical_id, root in found.items() if not root.is_dir())
    if missing:
        pytest.fail(
            f"{BUILD} has no build of {', '.join(missing)}: these tests read sam build's output. "
            "Run `make build` (or `make test`, which builds before pytest) first.",
            pytrace=False,
        )
    return found


def _sources(root: Path) -> Iterator[Path]:
    yield from (p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_function_and_the_layer_are_built_by_lambda_mk():
    rules = re.findall(r"^build-%(\w+):", LAMBDA_MK.read_text(), flags=re.MULTILINE)
    for logical_id, resource in _resources().items():
        assert (resource.get("Metadata") or {}).get("BuildMethod") == "makefile", logical_id
        uri = resource["Properties"].get("CodeUri") or resource["Properties"]["ContentUri"]
        # A symlink, so that sam build's cache (a hash of the folder's files) sees every change of the recipe
        makefile = ROOT / uri / "Makefile"
        assert makefile.is_symlink() and makefile.resolve() == LAMBDA_MK, f"{uri}/Makefile is not lambda.mk"
        assert any(logical_id.endswith(suffix) for suffix in rules), f"no build-%<suffix> rule matches {logical_id}"


def test_the_build_platform_is_the_template_architecture(artifacts: dict[str, Path]):
    template = load_sam_template()
    [architecture] = template["Globals"]["Function"]["Architectures"]
    for resource in _resources().values():
        assert resource["Properties"].get("Architectures", [architecture]) == [architecture]
        if resource["Type"] == "AWS::Serverless::LayerVersion":
            assert resource["Metadata"]["BuildArchitecture"] == architecture
            assert resource["Properties"]["CompatibleArchitectures"] == [architecture]
    [platform] = re.findall(r"^LAMBDA_PLATFORM\s*\?=\s*(\S+)", LAMBDA_MK.read_text(), flags=re.MULTILINE)
    assert platform.endswith("_" + ARCH_SUFFIX[architecture])
    extensions = [p for root in artifacts.values() for p in root.rglob("*.so")]
    assert extensions, "the build has no native extension at all (pydantic_core is one): is it complete?"
    for extension in extensions:
        assert f"-{ARCH_SUFFIX[architecture]}-linux-gnu" in extension.name, extension


def test_no_artifact_ships_the_runtimes_aws_sdk(artifacts: dict[str, Path]):
    for logical_id, root in artifacts.items():
        shipped = {p.name for p in root.iterdir()}
        for name in RUNTIME_SDK:
            assert name not in shipped and f"{name}.py" not in shipped, f"{logical_id} ships {name}"
        for dist in RUNTIME_SDK_DISTS:
            assert not list(root.glob(f"{dist}-*.dist-info")), f"{logical_id} ships {dist}'s metadata"
    # The X-Ray SDK (Tracing: Active) is in the layer; its botocore is the runtime's.
    layer = next(root for logical_id, root in artifacts.items() if root.name == "python")
    assert (layer / "aws_xray_sdk" / "core" / "__init__.py").is_file()


def test_every_module_ships_unchecked_bytecode_of_its_own_source(artifacts: dict[str, Path]):
    for logical_id, root in artifacts.items():
        mount = "/opt/python" if root.name == "python" else "/var/task"
        sources = list(_sources(root))
        assert sources, f"{logical_id} has no Python source"
        for source in sources:
            cached = Path(importlib.util.cache_from_source(str(source)))
            assert cached.is_file(), f"{logical_id}: no bytecode for {source.relative_to(root)}"
            data = cached.read_bytes()
            header = data[:16]
            assert header[:4] == importlib.util.MAGIC_NUMBER, f"{cached} is not Python 3.13 bytecode"
            (flags,) = struct.unpack("<I", header[4:8])
            assert flags == UNCHECKED_HASH, f"{cached} would be checked against its source (flags {flags:#b})"
            assert header[8:16] == importlib.util.source_hash(source.read_bytes()), f"{cached} is stale"
            # The path it records is the one Lambda has, not the build machine's: artifacts are reproducible.
            recorded = marshal.loads(data[16:]).co_filename  # noqa: S302 - our own build output
            assert recorded == f"{mount}/{source.relative_to(root).as_posix()}", recorded


def test_python_loads_the_shipped_bytecode_without_compiling(artifacts: dict[str, Path], monkeypatch):
    def refuse(self, data, path, *args, **kwargs):
        raise AssertionError(f"{path} was compiled from source: its bytecode was not accepted")

    monkeypatch.setattr(SourceFileLoader, "source_to_code", refuse)
    monkeypatch.setattr("sys.dont_write_bytecode", True)
    loaded = 0
    for root in artifacts.values():
        for source in _sources(root):
            assert SourceFileLoader("probe", str(source)).get_code("probe") is not None
            loaded += 1
    assert loaded > 100


def test_the_layer_ships_the_current_source(artifacts: dict[str, Path]):
    layer = next(root for root in artifacts.values() if root.name == "python")
    package = ROOT / "layers" / "spotkeeper" / "spotkeeper"
    for source in _sources(package):
        built = layer / "spotkeeper" / source.relative_to(package)
        assert built.is_file() and built.read_bytes() == source.read_bytes(), (
            f"{built} differs from {source}: the build is stale, run `make build`"
        )


def _distributions(root: Path) -> set[str]:
    return {p.name.removesuffix(".dist-info").rsplit("-", 1)[0].lower() for p in root.glob("*.dist-info")}


def test_no_function_ships_a_distribution_the_layer_ships(artifacts: dict[str, Path]):
    # /var/task comes before /opt/python on sys.path: a second copy in a function shadows the layer's, and is paid
    # for in every deployment package (the gateway shipped httpx, anyio, idna and certifi twice).
    layer = next(root for root in artifacts.values() if root.name == "python")
    in_layer = _distributions(layer)
    assert {"httpx", "anyio", "msgspec"} <= in_layer, sorted(in_layer)
    for logical_id, root in artifacts.items():
        if root != layer:
            assert not _distributions(root) & in_layer, f"{logical_id} ships {sorted(_distributions(root) & in_layer)}"
    gateway = next(root for root in artifacts.values() if (root / "run.sh").is_file())
    assert {"fastapi", "uvicorn", "pydantic"} <= _distributions(gateway)
