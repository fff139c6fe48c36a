"""Admin building blocks shared by the apps."""

import functools

from django.contrib import admin, messages
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import PermissionDenied
from django.utils.html import format_html


class ReadOnlyModelAdmin(admin.ModelAdmin):
    """Records written by the pipeline: visible to staff, changed only through the services."""

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyInline(admin.TabularInline):
    """Rows shown on their parent's page (its items, its attempts), never changed there."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


def apply_to_each(modeladmin, request, queryset, *, operation, done: str) -> None:
    """Run ``operation(obj)`` for each selected object; report each failure and the count done.

    An operation refuses by raising; the others still run.
    """
    succeeded = 0
    for obj in queryset:
        try:
            operation(obj)
        except Exception as exc:  # each refusal is shown to the operator, with its reason
            modeladmin.message_user(request, f"{obj}: {exc}", level=messages.ERROR)
        else:
            succeeded += 1
    if succeeded:
        modeladmin.message_user(request, f"{done}: {succeeded}", level=messages.SUCCESS)


def operator_action(*, permission: str, description: str, operation, done: str):
    """An admin action that calls ``operation(obj, requested_by=...)`` on each selected object,
    in the operator's name (see ``apply_to_each``).

    ``permission`` ("app_label.codename") is required, so no action exists without one: the
    action is Django's with ``permissions=[codename]``, which the ModelAdmin answers with a
    ``has_<codename>_permission(request)`` method checking ``request.user.has_perm(permission)``
    (Django's check admin.E129 refuses to start without it). A user without it is not offered the
    action, and Django runs nothing for a POST of it.
    """
    codename = _codename(permission)

    @admin.action(description=description, permissions=[codename])
    def action(modeladmin, request, queryset):
        requested_by = operator_name(request)
        apply_to_each(
            modeladmin, request, queryset, operation=lambda obj: operation(obj, requested_by=requested_by), done=done
        )

    action.required_permission = permission
    return action


def operator_view(*, permission: str):
    """Decorates a ModelAdmin method serving an operator's form (from ``get_urls``, wrapped in
    ``admin_site.admin_view``): a user without ``permission`` ("app_label.codename") gets 403, and
    ``operator_permissions`` finds the permission, so the operators group gets it."""
    _codename(permission)

    def decorate(view):
        @functools.wraps(view)
        def guarded(modeladmin, request, *args, **kwargs):
            if not request.user.has_perm(permission):
                raise PermissionDenied
            return view(modeladmin, request, *args, **kwargs)

        guarded.required_permission = permission
        return guarded

    return decorate


def _codename(permission: str) -> str:
    app_label, dot, codename = permission.partition(".")
    if not (app_label and dot and codename) or "." in codename:
        raise ValueError(f"an operator action or view needs a permission 'app_label.codename', not {permission!r}")
    return codename


@admin.display(description="id")
def one_line_id(obj):
    """A UUID in one line of a list, whatever the column's width."""
    return format_html('<code style="white-space: nowrap">{}</code>', obj.pk)


def operator_name(request) -> str:
    return f"admin:{request.user.get_username()}"


# The groups an operator is put in (``manage.py create_operator_groups``): the project's admin
# pages to read, and, for "operators", every operator action's and view's permission besides.
OPERATOR_APPS = ("orders", "payments", "notifications", "events", "recovery", "webhooks")
READONLY_OPERATORS = "operators-readonly"
OPERATORS = "operators"


def operator_permissions(site=admin.site) -> set[str]:
    """The permission ("app_label.codename") of every operator action and operator view of the
    ModelAdmins registered on ``site``."""
    found = set()
    for modeladmin in site._registry.values():
        members = [action for action, _name, _description in modeladmin._get_base_actions()]
        members += [getattr(type(modeladmin), name) for name in dir(type(modeladmin))]
        found |= {member.required_permission for member in members if hasattr(member, "required_permission")}
    return found


def ensure_operator_groups() -> dict[str, list[str]]:
    """Create or reset the groups READONLY_OPERATORS (view_* of OPERATOR_APPS' models) and
    OPERATORS (those and ``operator_permissions``); each ends with exactly these
    permissions. Run after migrate, which creates the permissions. Returns each group's."""
    view = Permission.objects.filter(content_type__app_label__in=OPERATOR_APPS, codename__startswith="view_")
    actions = Permission.objects.none()
    for permission in operator_permissions():
        app_label, codename = permission.split(".")
        actions |= Permission.objects.filter(content_type__app_label=app_label, codename=codename)
    granted = {READONLY_OPERATORS: list(view), OPERATORS: list(view | actions)}
    for name, permissions in granted.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(permissions)
    return {
        name: sorted(f"{p.content_type.app_label}.{p.codename}" for p in permissions) for name, permissions in granted.items()
    }
