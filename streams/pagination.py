"""List pagination: limit/offset, with bounds so a huge `limit` is clamped, not a 500."""

from rest_framework.pagination import LimitOffsetPagination


class Pagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 500
