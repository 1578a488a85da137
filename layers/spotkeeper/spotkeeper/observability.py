"""Logger, Tracer and Metrics, created once; every module imports them from here."""

from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger()
tracer = Tracer()
metrics = Metrics()
