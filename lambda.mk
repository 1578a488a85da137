# How `sam build` builds every function and the layer (template Metadata `BuildMethod: makefile`).
#
# sam build copies a CodeUri/ContentUri folder to a scratch folder and runs `make build-<LogicalId>` there with
# that folder's Makefile, ARTIFACTS_DIR set. Each of those Makefiles is a symlink to this file: sam build's cache
# hashes the folder's files through it, so a change here rebuilds every artifact. The recipe:
#   1. copies the folder (without its Makefile) and installs its requirements.txt for Lambda's platform,
#   2. leaves out what the python3.13 runtime already ships (boto3, botocore and their dependencies): the
#      X-Ray SDK depends on botocore, and a second, unpinned copy would shadow the runtime's,
#   3. for a function, leaves out every distribution the shared layer ships: the function's requirements are
#      resolved against the layer's (the layer's requirements are installed aside, and their versions are the
#      constraints), then the layer's distributions are removed from the function. /var/task comes before
#      /opt/python on sys.path, so a copy in the function would shadow the layer's (the gateway and the layer
#      both shipped pydantic, pydantic_core, anyio, httpx, idna, certifi: about 11 MB twice). `sam build --cached` would not see a change of the
#      layer's requirements in a function's folder hash: build without --cached after one (make build does),
#   4. compiles bytecode with the runtime's Python (3.13). Lambda's code and layers are read-only, so Python
#      can never write a .pyc there: without shipped bytecode every module is compiled again at every cold
#      start. `unchecked-hash` .pyc files are used without looking at the source's mtime, which the zip and
#      Lambda's extraction do not keep exactly; paths in tracebacks say /var/task and /opt/python.

LAMBDA_PYTHON   ?= python3.13
# The template's Architectures / BuildArchitecture (arm64); tests/test_build.py checks they agree.
LAMBDA_PLATFORM ?= manylinux2014_aarch64
# Import names and distribution names of what the python3.13 runtime provides.
RUNTIME_PROVIDED      := boto3 botocore s3transfer jmespath dateutil urllib3 six
RUNTIME_PROVIDED_DIST := boto3 botocore s3transfer jmespath python_dateutil urllib3 six
# sam build runs `make -f <folder>/Makefile`, a symlink to this file: its real path gives the repository.
REPO_ROOT := $(patsubst %/,%,$(dir $(realpath $(firstword $(MAKEFILE_LIST)))))
SHARED_LAYER_REQUIREMENTS := $(REPO_ROOT)/layers/spotkeeper/requirements.txt
PIP_FOR_LAMBDA = $(LAMBDA_PYTHON) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  --no-compile --only-binary=:all: --platform $(LAMBDA_PLATFORM) --implementation cp --python-version 3.13

# Python run as `$(LAMBDA_PYTHON) -c "$$LAYER_DISTS" MODE LAYER_SITE [TARGET]`. MODE pins: print the layer's
# distributions as constraints (name==version). MODE drop: delete from TARGET, by its RECORD, every distribution
# the layer ships at the same version; a different version is an error (the constraints make them agree).
define LAYER_DISTS
import pathlib, sys
mode, layer = sys.argv[1], pathlib.Path(sys.argv[2])
provided = dict(p.name.removesuffix(".dist-info").rsplit("-", 1) for p in layer.glob("*.dist-info"))
if mode == "pins":
    print("\n".join(f"{name}=={version}" for name, version in sorted(provided.items())))
    sys.exit()
target = pathlib.Path(sys.argv[3])
for info in sorted(target.glob("*.dist-info")):
    name, version = info.name.removesuffix(".dist-info").rsplit("-", 1)
    if name not in provided:
        continue
    if provided[name] != version:
        sys.exit(f"lambda.mk: the function needs {name} {version}, the layer ships {provided[name]}")
    for line in (info / "RECORD").read_text().splitlines():
        path = target / line.split(",", 1)[0]
        if path.is_file() and target.resolve() in path.resolve().parents:
            path.unlink()
    for folder in sorted((p for p in target.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(folder.iterdir()):
            folder.rmdir()
    print(f"lambda.mk: {name} {version} is the layer's, left out of the function")
endef
export LAYER_DISTS

# $(1): the folder Lambda mounts (the function's /var/task, or the layer's python/ under /opt).
# $(2): that folder's path in Lambda, recorded in the bytecode for tracebacks.
# $(3): for a function, a scratch folder where the shared layer's requirements are installed (step 3).
define lambda_build
	@$(LAMBDA_PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' || { \
	  echo "lambda.mk: $(LAMBDA_PYTHON) is not Python 3.13, the Lambda runtime (make build puts it on PATH)"; exit 1; }
	rm -rf "$(1)" && mkdir -p "$(1)"
	find . -mindepth 1 -maxdepth 1 ! -name Makefile ! -name __pycache__ -exec cp -R {} "$(1)/" \;
	if [ -f requirements.txt ] && [ -n "$(3)" ]; then \
	  rm -rf "$(3)" && $(PIP_FOR_LAMBDA) --target "$(3)" -r "$(SHARED_LAYER_REQUIREMENTS)" && \
	  $(LAMBDA_PYTHON) -c "$$LAYER_DISTS" pins "$(3)" > "$(3).constraints" && \
	  $(PIP_FOR_LAMBDA) --target "$(1)" -r requirements.txt -c "$(3).constraints" && \
	  $(LAMBDA_PYTHON) -c "$$LAYER_DISTS" drop "$(3)" "$(1)" && rm -rf "$(3)" "$(3).constraints"; \
	elif [ -f requirements.txt ]; then \
	  $(PIP_FOR_LAMBDA) --target "$(1)" -r requirements.txt; fi
	cd "$(1)" && rm -rf bin $(RUNTIME_PROVIDED) $(addsuffix .py,$(RUNTIME_PROVIDED)) \
	  $(addsuffix -*.dist-info,$(RUNTIME_PROVIDED_DIST)) $(addsuffix -*.data,$(RUNTIME_PROVIDED_DIST))
	find "$(1)" -name __pycache__ -prune -exec rm -rf {} +
	$(LAMBDA_PYTHON) -m compileall -q -j 0 --invalidation-mode unchecked-hash -s "$(1)" -p "$(2)" "$(1)"
endef

build-%Layer:
	$(call lambda_build,$(ARTIFACTS_DIR)/python,/opt/python,)

build-%Function:
	$(call lambda_build,$(ARTIFACTS_DIR),/var/task,$(CURDIR)/.shared-layer)
