"""List pagination: limit/offset, validated like every other number a client sends."""

from __future__ import annotations

from typing import Any

from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request

from streams.params import MAX_DIGITS, parse_int

# Any offset past the rows is an empty page; this one fits every database's OFFSET.
MAX_OFFSET = 2**31 - 1


class Pagination(LimitOffsetPagination):
    """`limit` from 1 up (a larger one is clamped to `max_limit`, as documented), `offset`
    from 0 to MAX_OFFSET. Anything else is `invalid_limit` / `invalid_offset`, not the
    silent default DRF falls back to (nor the database's overflow error, a 500)."""

    default_limit = 50
    max_limit = 500

    def get_limit(self, request: Request) -> int:
        raw = request.query_params.get(self.limit_query_param, "")
        if raw == "":
            return self.default_limit
        digits = raw.strip()
        if digits.isascii() and digits.isdigit() and len(digits) > MAX_DIGITS:
            return self.max_limit  # a valid, huge limit: clamped like any other
        limit = parse_int(
            raw,
            field=self.limit_query_param,
            minimum=1,
            maximum=10**MAX_DIGITS,  # no real bound: a larger limit is capped, not refused
            text=True,
            what=f"an integer of at least 1 (larger ones are capped at {self.max_limit})",
        )
        return min(limit, self.max_limit)

    def get_offset(self, request: Request) -> int:
        raw = request.query_params.get(self.offset_query_param, "")
        if raw == "":
            return 0
        return parse_int(
            raw, field=self.offset_query_param, minimum=0, maximum=MAX_OFFSET, text=True
        )

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        bounds = {
            self.limit_query_param: {"minimum": 1, "default": self.default_limit},
            self.offset_query_param: {"minimum": 0, "maximum": MAX_OFFSET, "default": 0},
        }
        for parameter in parameters:
            parameter["schema"].update(bounds.get(parameter["name"], {}))
        return parameters
