"""Who may use the API: open in the local default, token clients (and staff) when required."""

from __future__ import annotations

from django.conf import settings
from rest_framework.permissions import BasePermission
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle


def auth_required() -> bool:
    return settings.API_REQUIRE_AUTH


class ApiAccess(BasePermission):
    message = "Authentication required: send 'Authorization: Token <token>'."

    def has_permission(self, request, view):
        return not auth_required() or bool(request.user and request.user.is_authenticated)


def sees_all_orders(user) -> bool:
    """Staff see every order; with authentication required, a client sees only its own."""
    return not auth_required() or bool(user and user.is_staff)


class AnonymousThrottle(AnonRateThrottle):
    """Per client address; the rate comes from ``api.throttle_anon`` (empty: no limit)."""

    def get_rate(self):
        return settings.API["throttle_anon"] or None


class ClientThrottle(UserRateThrottle):
    """Per authenticated client; ``api.throttle_user`` (empty: no limit)."""

    def get_rate(self):
        return settings.API["throttle_user"] or None
