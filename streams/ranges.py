"""HTTP byte ranges (RFC 9110 §14): parsing `Range` and `If-Range`, and the headers' values.

Pure on purpose, like streams/audio.py: every audio URL (chat answers, a stream's WAV, voice
downloads, recordings) answers ranges through config/http_ranges.py, which calls this. Players
need it: Safari refuses an `<audio>` whose server ignores ranges, and every browser seeks with
them.

One range only: a multi-range request or a malformed header is answered with the whole file
(200), which RFC 9110 allows and every player accepts.
"""

from __future__ import annotations

import hashlib

# Any position with more digits than this is past every file (2**63 has 19 digits); reading
# it as a number would hit Python's int-conversion limit at 4300 digits.
_MAX_POSITION_DIGITS = 19


class RangeNotSatisfiable(ValueError):
    """The Range header asks for bytes the file does not have (HTTP 416)."""


def _byte_position(digits: str) -> int:
    """A Range position; an absurdly long one is clamped to 2**63 instead of converted."""
    return int(digits) if len(digits) <= _MAX_POSITION_DIGITS else 2**63


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One `bytes=` range of a `size`-byte body as (first, last), both inclusive byte offsets,
    or None to send the whole body.

    `bytes=0-99` (the first 100 bytes), `bytes=100-` (from offset 100 to the end) and
    `bytes=-100` (the last 100 bytes) are read; a last offset past the end is clamped to it.
    Malformed headers, other units and multi-range requests give None (RFC 9110 allows
    serving 200). Raises RangeNotSatisfiable for a well-formed range that starts at or past
    the end, a zero-length suffix, or any range of an empty body.
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_raw, dash, last_raw = spec.strip().partition("-")
    first_raw, last_raw = first_raw.strip(), last_raw.strip()
    if not dash or not (first_raw or last_raw):
        return None
    if not all(part.isascii() and part.isdigit() for part in (first_raw, last_raw) if part):
        return None
    if not first_raw:  # a suffix: the last N bytes
        suffix = _byte_position(last_raw)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return max(0, size - suffix), size - 1
    first = _byte_position(first_raw)
    last = _byte_position(last_raw) if last_raw else size - 1
    if last_raw and last < first:
        return None  # malformed: ignored
    if first >= size:
        raise RangeNotSatisfiable(header)
    return first, min(last, size - 1)


def if_range_allows(if_range: str | None, etag: str) -> bool:
    """Whether a Range may be honoured given the request's `If-Range` value and the body's
    current strong `etag` (with its quotes).

    No If-Range: yes. An entity tag: only if it is the same strong tag (a weak `W/` tag never
    matches). A date: no, since these bodies carry no Last-Modified to compare it with; the
    client then gets the whole new body, which is what If-Range is for (RFC 9110 §13.1.5).
    """
    if if_range is None:
        return True
    value = if_range.strip()
    return value.startswith('"') and value == etag


def content_etag(content: bytes) -> str:
    """A strong entity tag of in-memory `content`: 32 hex digits of its BLAKE2b, quoted."""
    return '"' + hashlib.blake2b(content, digest_size=16).hexdigest() + '"'


def file_etag(size: int, mtime_ns: int) -> str:
    """A strong entity tag of a file from its size in bytes and modification time in ns
    (what Apache and nginx derive theirs from)."""
    return f'"{size:x}-{mtime_ns:x}"'


def content_range(first: int, last: int, size: int) -> str:
    """The Content-Range value of a 206: `bytes first-last/size` (offsets inclusive)."""
    return f"bytes {first}-{last}/{size}"


def unsatisfied_range(size: int) -> str:
    """The Content-Range value of a 416: `bytes */size`."""
    return f"bytes */{size}"
