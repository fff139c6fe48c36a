"""Corrections drf-spectacular cannot infer, so the OpenAPI schema says what the API does."""

from __future__ import annotations

from django.conf import settings


def complete_schema(result, generator, request, public):
    """POSTPROCESSING_HOOK: optional auth when the API is open, and the order's item limits."""
    if not settings.API_REQUIRE_AUTH:
        for path in result["paths"].values():
            for operation in path.values():
                if operation.get("security") and {} not in operation["security"]:
                    operation["security"].append({})
    items = result["components"]["schemas"]["OrderCreate"]["properties"]["items"]
    items.update(minItems=1, maxItems=settings.ORDER_LIMITS["max_items"])
    return result
