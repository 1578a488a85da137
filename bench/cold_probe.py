"""One cold start, in a fresh interpreter: ``python -P bench/cold_probe.py TARGET`` prints one JSON line.

TARGET is ``boto3`` (the baseline: a bare ``import boto3``), ``boto3-clients`` (the cost of each client a
function builds), or a function folder name, optionally suffixed ``+notrace`` (the caller's environment then
turns tracing off). A function is imported the way Lambda's bootstrap imports it (its folder first on
sys.path, ``import app``), then its clients are built the way its first event builds them. Nothing but
``sys``, ``os`` and ``time`` (loaded with the interpreter anyway) is imported before the clock starts, so the
baseline and every function pay for the same modules.

When ``BENCH_DEPLOYED_PACKAGES`` lists top-level names (what ``sam build`` put in the layer and the function,
plus what the Lambda runtime brings), any other third-party package of this machine's environment is
refused, as it would be missing in Lambda: optional imports (httpx's CLI pulling in rich and pygments when
they happen to be installed) then cost what they cost in Lambda.
"""

import os
import sys
import time


class _OnlyDeployed:
    """A meta path finder refusing top-level third-party packages that are not deployed."""

    def __init__(self, allowed):
        self.allowed = allowed

    def find_spec(self, name, path=None, target=None):
        if path is not None:
            return None
        if name in self.allowed or name in sys.stdlib_module_names or name in sys.builtin_module_names:
            return None
        if name.startswith("_sysconfigdata"):  # the interpreter's own build configuration
            return None
        raise ModuleNotFoundError(f"No module named {name!r} (not in the deployed package)", name=name)


_DEPLOYED = os.environ.get("BENCH_DEPLOYED_PACKAGES")
if _DEPLOYED:
    sys.meta_path.insert(0, _OnlyDeployed(frozenset(_DEPLOYED.split(",")) | {"app", "__main__"}))


def _build_clients(name, app):
    if name in ("interruption", "lifecycle", "health"):
        app.control_deps()
    elif name == "capacity":
        app.capacity_deps()
    elif name == "authorizer":
        app._store()
    elif name in ("gateway", "gateway-first-request"):
        import asyncio

        async def start():
            # What the Lambda Web Adapter's readiness check waits for: the app's lifespan has run.
            async with app.app.router.lifespan_context(app.app):
                if name == "gateway-first-request":
                    # A gateway reading the serving instance from the state table builds its DynamoDB
                    # resource on the first request.
                    import boto3

                    boto3.resource("dynamodb").Table(os.environ["STATE_TABLE_NAME"])

        asyncio.run(start())
    else:
        raise SystemExit(f"cold_probe: unknown target {name!r}")


def _client_costs():
    """Milliseconds to build each client the functions use, one after the other, after ``import boto3``."""
    import boto3

    session = boto3.session.Session()
    costs = {}
    for service in ("autoscaling", "ec2", "sns", "cloudwatch", "dynamodb"):
        started = time.perf_counter()
        if service == "dynamodb":
            session.resource("dynamodb").Table("spotkeeper-state")
        else:
            session.client(service)
        costs[service] = round((time.perf_counter() - started) * 1000.0, 3)
    return costs


def main(argv):
    if len(argv) != 3:
        raise SystemExit("usage: python -P bench/cold_probe.py TARGET FUNCTIONS_DIR")
    target, functions_dir = argv[1], argv[2]
    base = target.split("+")[0]
    extra = {}
    started = time.perf_counter()
    if base == "boto3":
        import boto3  # the import is what is timed

        imported = built = time.perf_counter()
    elif base == "boto3-clients":
        import boto3  # noqa: F401

        imported = time.perf_counter()
        extra["client_ms"] = _client_costs()
        built = time.perf_counter()
    else:
        folder = "gateway" if base.startswith("gateway") else base
        sys.path.insert(0, f"{functions_dir}/{folder}")
        import app

        imported = time.perf_counter()
        _build_clients(base, app)
        built = time.perf_counter()
    import json

    print(
        json.dumps(
            {
                "target": target,
                "import_ms": round((imported - started) * 1000.0, 3),
                "clients_ms": round((built - imported) * 1000.0, 3),
                "total_ms": round((built - started) * 1000.0, 3),
                "modules": len(sys.modules),
                "loaded": sorted(
                    name
                    for name in ("boto3", "botocore", "aws_xray_sdk", "pydantic", "fastapi", "httpx")
                    if name in sys.modules
                ),
                **extra,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv)
