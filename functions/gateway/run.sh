#!/bin/bash
# Started by the Lambda Web Adapter (AWS_LAMBDA_EXEC_WRAPPER=/opt/bootstrap), which forwards API Gateway's
# requests to this server and streams its responses back (AWS_LWA_INVOKE_MODE=response_stream).
# /opt/python holds the spotkeeper layer; the function's own dependencies are in its task root.
TASK_ROOT="${LAMBDA_TASK_ROOT:-$(cd "$(dirname "$0")" && pwd)}"
export PYTHONPATH="${TASK_ROOT}:/opt/python${PYTHONPATH:+:${PYTHONPATH}}"
export PATH="${PATH}:${TASK_ROOT}/bin"
exec python -m uvicorn app:app --app-dir "${TASK_ROOT}" --host 127.0.0.1 --port "${PORT:-8000}" \
  --no-access-log --timeout-keep-alive 75
