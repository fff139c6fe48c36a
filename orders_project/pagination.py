from django.conf import settings
from rest_framework.pagination import PageNumberPagination


class StandardPagination(PageNumberPagination):
    """``?page=N`` and ``?page_size=M`` (up to ``max_page_size``)."""

    page_size = settings.ORDER_LIMITS["page_size"]
    page_size_query_param = "page_size"
    max_page_size = 500
