"""The gateway: an authenticated (at API Gateway), streaming front door to TGI on the serving instance.

``create_app()`` is the FastAPI app that ``functions/gateway/app.py`` serves through the Lambda Web Adapter
and that ``uvicorn`` serves locally.
"""

from spotkeeper.gateway.api import create_app
from spotkeeper.gateway.settings import GatewayConfigError, GatewaySettings

__all__ = ["GatewayConfigError", "GatewaySettings", "create_app"]
