"""Admin building blocks shared by the apps."""

from django.contrib import admin


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
