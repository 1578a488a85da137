"""The gateway function: an ASGI app, served by uvicorn under the Lambda Web Adapter (Handler: run.sh).

Configuration is read and validated when the app starts (uvicorn's lifespan), so a misconfigured function
fails its readiness check instead of serving errors. Everything else lives in ``spotkeeper.gateway``.
"""

from spotkeeper.gateway.api import create_app

app = create_app()
