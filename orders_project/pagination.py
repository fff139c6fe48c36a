import re

from django.conf import settings
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination

# ASCII digits only: str.isdigit() also takes "²" and "٣", which int() refuses or reads.
_DIGITS = re.compile(r"[0-9]{1,10}")


def _bounded_int(raw: str, *, name: str, low: int, high: int) -> int:
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise ValidationError({name: [f"An integer from {low} to {high}."]})
    return int(raw)


class StandardPagination(PageNumberPagination):
    """``?page=N`` (1 to ``max_page``) and ``?page_size=M`` (1 to ``max_page_size``); anything
    else is a 400 (DRF would read ``?page=`` as page 1 and ``?page=last`` as the last page); a
    page past the end is a 404."""

    # A list row has no items: 100 rows are 55 KB at most, 206 KB if every text field is
    # control characters, which JSON writes as six bytes each (README, "HTTP API").
    max_page_size = 100
    page_size = min(settings.ORDER_LIMITS["page_size"], max_page_size)
    page_size_query_param = "page_size"
    max_page = 1_000_000_000

    def get_page_size(self, request):
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        return _bounded_int(raw, name=self.page_size_query_param, low=1, high=self.max_page_size)

    def get_page_number(self, request, paginator):
        raw = request.query_params.get(self.page_query_param)
        if raw is None:
            return 1
        return _bounded_int(raw, name=self.page_query_param, low=1, high=self.max_page)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page_size)
            if parameter["name"] == self.page_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page)
        return parameters
