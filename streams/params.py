"""Numbers from clients: one parser for query strings, JSON bodies and handshake payloads.

Every number a client sends is checked here against the range its field allows before the
server does any work sized by it, and a bad one is an `invalid_<field>` ApiError naming the
field. Python's own conversions are not used on client text unchecked: `int()` raises a
bare ValueError past 4300 digits (`sys.get_int_max_str_digits`) and accepts `1_000` or
non-ASCII digits; `float()` accepts `nan` and `inf`.

A JSON number is the number it is: `1.0` is the integer 1 (JSON has one number type, and
JSON Schema's `integer` includes it), `1.5` is not an integer.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from streams.errors import ApiError

# Anything longer is out of every range we accept (2**63 has 19 digits); checked before
# converting, so a 5000-digit number costs no more than a short one.
MAX_DIGITS = 24
INT_TEXT = re.compile(r"[+-]?[0-9]+(?:\.0*)?")
NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
MAX_NUMBER_TEXT = 64
# Event ids are 64-bit (RoomEvent.seq): an `after` beyond is no id at all.
MAX_EVENT_ID = 2**63 - 1


class HugeInt:
    """A JSON integer too long to convert (see `json_loads`): out of range of any field."""

    __slots__ = ("digits", "negative")

    def __init__(self, text: str) -> None:
        self.negative = text.startswith("-")
        self.digits = len(text) - self.negative

    def __repr__(self) -> str:
        return f"a {self.digits}-digit {'negative ' if self.negative else ''}number"


def _json_int(text: str) -> int | HugeInt:
    return int(text) if len(text) <= MAX_DIGITS else HugeInt(text)


def json_loads(body: bytes | str) -> Any:
    """json.loads, except that integers too long to convert come back as HugeInt.

    So `{"seq": <5000 digits>}` is answered `invalid_seq` by the field's check instead of
    failing the whole body. Only the rare failing body is parsed twice: the common one takes
    the C parser's fast path. Raises ValueError for malformed JSON, as json.loads does.
    """
    try:
        return json.loads(body)
    except ValueError:
        return json.loads(body, parse_int=_json_int)


def _invalid(field: str, what: str, value: Any) -> ApiError:
    return ApiError(
        f"invalid_{field}", f"{field} must be {what}, not {_shown(value)}.", field=field
    )


def _shown(value: Any) -> str:
    if isinstance(value, HugeInt):
        return repr(value)
    if isinstance(value, str):
        if len(value) > 40:
            return f"a {len(value)}-character string"
        return repr(value)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int) and value.bit_length() > 100:
        return f"a number of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    if isinstance(value, int | float):
        return repr(value)
    return f"a {type(value).__name__}"


def _range_text(kind: str, minimum: float, maximum: float) -> str:
    if isinstance(minimum, int) and isinstance(maximum, int):
        return f"{kind} from {minimum} to {maximum}"
    return f"{kind} from {minimum:g} to {maximum:g}"


def _int_detail(what: str, minimum: int, maximum: int, why: str = "") -> str:
    return (what or _range_text("an integer", minimum, maximum)) + why


def parse_int(
    value: Any,
    *,
    field: str,
    minimum: int,
    maximum: int,
    text: bool = False,
    why: str = "",
    what: str = "",
) -> int:
    """A client's integer for `field`, in [minimum, maximum].

    Takes an int, an integral float (JSON `16000.0`) or a HugeInt; with `text=True` (query
    strings, form-like handshake payloads) also ASCII digits, optionally signed, optionally
    ending in `.0`. `why` is added to the detail of an out-of-range value (say where the
    limit comes from); `what` replaces the range in every detail (say "an integer of at least
    1" where `maximum` is only a technical bound). Raises ApiError `invalid_<field>`
    (field=`field`) otherwise.
    """
    # The range text is only built for a refusal: five integer fields per chunk.
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            if not minimum <= value <= maximum:
                raise _invalid(field, _int_detail(what, minimum, maximum, why), value)
            number = int(value)
    elif isinstance(value, HugeInt):
        raise _invalid(field, _int_detail(what, minimum, maximum, why), value)
    elif text and isinstance(value, str):
        stripped = value.strip()
        if INT_TEXT.fullmatch(stripped):
            digits = stripped.split(".", 1)[0]
            if len(digits.lstrip("+-")) > MAX_DIGITS:
                raise _invalid(field, _int_detail(what, minimum, maximum, why), value)
            number = int(digits)
    if number is None:
        raise _invalid(field, _int_detail(what, minimum, maximum), value)
    if not minimum <= number <= maximum:
        raise _invalid(field, _int_detail(what, minimum, maximum, why), value)
    return number


def parse_number(
    value: Any, *, field: str, minimum: float, maximum: float, text: bool = False
) -> float:
    """A client's finite number for `field`, in [minimum, maximum].

    Takes an int, a float or a HugeInt (always out of range); with `text=True` also a
    decimal string (`1.5`, `2e-1`; never `nan` or `inf`). Raises ApiError `invalid_<field>`.
    """
    number: float | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        # An int too large for a float is out of range anyway.
        number = float(value) if abs(value) < 2**1023 else math.inf
    elif isinstance(value, float):
        number = value
    elif isinstance(value, HugeInt):
        number = -math.inf if value.negative else math.inf
    elif text and isinstance(value, str):
        stripped = value.strip()
        if len(stripped) <= MAX_NUMBER_TEXT and NUMBER_TEXT.fullmatch(stripped):
            number = float(stripped)
    if number is None or math.isnan(number):
        raise _invalid(field, _range_text("a number", minimum, maximum), value)
    if not minimum <= number <= maximum:
        raise _invalid(field, _range_text("a number", minimum, maximum), value)
    return number
