# How `sam build` builds every function and the layer (template Metadata `BuildMethod: makefile`).
#
# sam build copies a CodeUri/ContentUri folder to a scratch folder and runs `make build-<LogicalId>` there with
# that folder's Makefile, ARTIFACTS_DIR set. Each of those Makefiles is a symlink to this file: sam build's cache
# hashes the folder's files through it, so a change here rebuilds every artifact. The recipe:
#   1. copies the folder (without its Makefile) and installs its requirements.txt for Lambda's platform,
#   2. leaves out what the python3.13 runtime already ships (boto3, botocore and their dependencies): the
#      X-Ray SDK depends on botocore, and a second, unpinned copy would shadow the runtime's,
#   3. compiles bytecode with the runtime's Python (3.13). Lambda's code and layers are read-only, so Python
#      can never write a .pyc there: without shipped bytecode every module is compiled again at every cold
#      start. `unchecked-hash` .pyc files are used without looking at the source's mtime, which the zip and
#      Lambda's extraction do not keep exactly; paths in tracebacks say /var/task and /opt/python.

LAMBDA_PYTHON   ?= python3.13
# The template's Architectures / BuildArchitecture (arm64); tests/test_build.py checks they agree.
LAMBDA_PLATFORM ?= manylinux2014_aarch64
# Import names and distribution names of what the python3.13 runtime provides.
RUNTIME_PROVIDED      := boto3 botocore s3transfer jmespath dateutil urllib3 six
RUNTIME_PROVIDED_DIST := boto3 botocore s3transfer jmespath python_dateutil urllib3 six

# $(1): the folder Lambda mounts (the function's /var/task, or the layer's python/ under /opt).
# $(2): that folder's path in Lambda, recorded in the bytecode for tracebacks.
define lambda_build
	@$(LAMBDA_PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' || { \
	  echo "lambda.mk: $(LAMBDA_PYTHON) is not Python 3.13, the Lambda runtime (make build puts it on PATH)"; exit 1; }
	rm -rf "$(1)" && mkdir -p "$(1)"
	find . -mindepth 1 -maxdepth 1 ! -name Makefile ! -name __pycache__ -exec cp -R {} "$(1)/" \;
	if [ -f requirements.txt ]; then \
	  $(LAMBDA_PYTHON) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-compile \
	    --only-binary=:all: --platform $(LAMBDA_PLATFORM) --implementation cp --python-version 3.13 \
	    --target "$(1)" -r requirements.txt; fi
	cd "$(1)" && rm -rf bin $(RUNTIME_PROVIDED) $(addsuffix .py,$(RUNTIME_PROVIDED)) \
	  $(addsuffix -*.dist-info,$(RUNTIME_PROVIDED_DIST)) $(addsuffix -*.data,$(RUNTIME_PROVIDED_DIST))
	find "$(1)" -name __pycache__ -prune -exec rm -rf {} +
	$(LAMBDA_PYTHON) -m compileall -q -j 0 --invalidation-mode unchecked-hash -s "$(1)" -p "$(2)" "$(1)"
endef

build-%Layer:
	$(call lambda_build,$(ARTIFACTS_DIR)/python,/opt/python)

build-%Function:
	$(call lambda_build,$(ARTIFACTS_DIR),/var/task)
