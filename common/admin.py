"""Admin building blocks shared by the apps."""

from django.contrib import admin, messages
from django.utils.html import format_html


class NoSaveButtons:
    """A change page with nothing to save shows no Save buttons (its actions are on the list)."""

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "show_save": False,
            "show_save_and_continue": False,
            "show_save_and_add_another": False,
        }
        return super().changeform_view(request, object_id, form_url, extra_context)


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


def operator_action(*, description: str, operation, done: str):
    """An admin action that calls ``operation(obj, requested_by=...)`` on each selected object,
    in the operator's name (see ``apply_to_each``)."""

    @admin.action(description=description)
    def action(modeladmin, request, queryset):
        requested_by = operator_name(request)
        apply_to_each(
            modeladmin, request, queryset, operation=lambda obj: operation(obj, requested_by=requested_by), done=done
        )

    return action


@admin.display(description="id")
def one_line_id(obj):
    """A UUID in one line of a list, whatever the column's width."""
    return format_html('<code style="white-space: nowrap">{}</code>', obj.pk)


def operator_name(request) -> str:
    return f"admin:{request.user.get_username()}"
