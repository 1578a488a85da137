"""The gateway: an authenticated (at API Gateway), streaming front door to TGI on the serving instance.

``api.create_app()`` is the FastAPI app that ``functions/gateway/app.py`` serves through the Lambda Web Adapter
and that ``uvicorn`` serves locally; ``auth`` is the API key check the authorizer function runs. This package
imports nothing itself, so the authorizer does not load the web stack.
"""
