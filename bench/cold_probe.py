"""One cold import, in a fresh interpreter, the way Lambda's python3.13 runtime imports a handler.

    python -I -S -B bench/cold_probe.py TARGET TASK_ROOT LAYER_ROOT RUNTIME_SITE

prints one JSON line. ``bench/cold_start.py`` starts it with the paths of a Lambda-like file system made from
``sam build``'s output: TASK_ROOT stands for ``/var/task`` (the function's folder), LAYER_ROOT for
``/opt/python`` (the layer), RUNTIME_SITE for ``/var/lang/lib/python3.13/site-packages`` (the runtime's own,
precompiled boto3 and botocore). ``sys.path`` is put in Lambda's order: task root, layer, the standard library,
the runtime's site-packages; ``-I -S`` keeps this machine's environment off it, and ``-B`` (with the files
read-only) means no ``.pyc`` is written, as in Lambda, so a module shipped without bytecode is compiled at
every cold start.

TARGET is ``boto3`` (the baseline: a bare ``import boto3``, with the task root and the layer left off the
path: what a function without a layer pays), ``boto3-clients`` (the cost of each client a function builds), or
a function folder name (``import app``, then its clients built as its first event builds them). Nothing but
``sys``, ``os`` and ``time`` (loaded with the interpreter anyway) is imported before the clock starts.

Every module compiled from source while importing is counted, by where it came from (``compiled``): that is
how the bench checks that the shipped bytecode is really what Python loads.
"""

import os
import sys
import time

_COMPILED = []


def _count_compilations():
    """Record every source compilation the import system does (it calls SourceLoader.source_to_code)."""
    loader = sys.modules["_frozen_importlib_external"].SourceLoader
    original = loader.source_to_code

    def source_to_code(self, data, path, *args, **kwargs):
        _COMPILED.append(path)
        return original(self, data, path, *args, **kwargs)

    loader.source_to_code = source_to_code


def _build_clients(name, app):
    if name in ("interruption", "lifecycle", "health"):
        app.control_deps()
    elif name == "capacity":
        app.capacity_deps()
    elif name == "authorizer":
        app._store()
    elif name == "gateway":
        import asyncio

        async def start():
            # What the Lambda Web Adapter's readiness check waits for: the app's lifespan has run.
            async with app.app.router.lifespan_context(app.app):
                pass

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


def _where(path, roots):
    for name, root in roots.items():
        if path.startswith(root + os.sep):
            return name
    return "stdlib"


def main(argv):
    if len(argv) != 5:
        raise SystemExit("usage: python -I -S -B bench/cold_probe.py TARGET TASK_ROOT LAYER_ROOT RUNTIME_SITE")
    target, task_root, layer_root, runtime_site = argv[1:]
    baseline = target.startswith("boto3")
    # Lambda: /var/task, /opt/python, then the interpreter's own paths, then its site-packages.
    sys.path[:] = ([] if baseline else [task_root, layer_root]) + sys.path + [runtime_site]
    _count_compilations()
    extra = {}
    cpu_started = time.process_time()
    started = time.perf_counter()
    if target == "boto3":
        import boto3  # the import is what is timed

        imported = built = time.perf_counter()
        cpu_imported = time.process_time()
    elif target == "boto3-clients":
        import boto3  # noqa: F401

        imported = time.perf_counter()
        cpu_imported = time.process_time()
        extra["client_ms"] = _client_costs()
        built = time.perf_counter()
    else:
        import app

        imported = time.perf_counter()
        cpu_imported = time.process_time()
        _build_clients(target, app)
        built = time.perf_counter()
    import json

    roots = {"task": task_root, "layer": layer_root, "runtime": runtime_site}
    compiled = {"task": 0, "layer": 0, "runtime": 0, "stdlib": 0}
    for path in _COMPILED:
        compiled[_where(path, roots)] += 1
    layer_botocore = getattr(sys.modules.get("botocore"), "__file__", "") or ""
    print(
        json.dumps(
            {
                "target": target,
                "import_ms": round((imported - started) * 1000.0, 3),
                "import_cpu_ms": round((cpu_imported - cpu_started) * 1000.0, 3),
                "clients_ms": round((built - imported) * 1000.0, 3),
                "total_ms": round((built - started) * 1000.0, 3),
                "modules": len(sys.modules),
                "compiled": compiled,
                "botocore_from": _where(layer_botocore, roots) if layer_botocore else None,
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
