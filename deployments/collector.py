"""The former home of the HTTP ingress, kept so that ``deployments.collector.CollectorIngress``
still imports: the ingress is :mod:`deployments.ingress` (its Serve deployment is still named
``Collector``), its OpenAPI document :mod:`deployments.api`."""

from deployments.api import api
from deployments.ingress import CollectorIngress

__all__ = ["CollectorIngress", "api"]
