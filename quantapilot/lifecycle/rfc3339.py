"""RFC 3339 ``date-time`` parsing for the lifecycle models (the published ``format: date-time``, exactly).

pydantic's own datetime parsing reads a wider ISO 8601 (a space for ``T``, no offset, unix seconds); the
request models parse their timestamps here instead, so what they accept is what the published schemas say.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

# ASCII digits only (RFC 3339's DIGIT; ``\d`` would take any script's digits) and matched whole (``$`` would let a
# trailing newline through).
_RFC3339 = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})[Tt](?P<h>\d{2}):(?P<mi>\d{2}):(?P<s>\d{2})(?P<f>\.\d+)?"
    r"(?:(?P<z>[Zz])|(?P<sign>[+-])(?P<oh>\d{2}):(?P<om>\d{2}))",
    re.ASCII,
)


#: The ``maxLength`` the published schemas give a timestamp's text.
MAX_TEXT = 64


def parse_rfc3339(value: str, *, max_length: int | None = None) -> datetime:
    """Parse an RFC 3339 ``date-time`` into an aware datetime.

    Stricter than :meth:`datetime.fromisoformat`: the offset is required, the separator is ``T`` (or ``t``),
    and every field is range-checked. Leap seconds (``:60``) are refused because a Python datetime, and so the
    database, cannot hold them; fractional digits beyond microseconds are truncated.

    Args:
        value: The text, e.g. ``2025-11-17T12:00:00Z``.
        max_length: Refuse longer text (the schemas' ``maxLength``); None: any length.

    Returns:
        The datetime with its offset.

    Raises:
        ValueError: When ``value`` is not an RFC 3339 date-time.
    """
    if max_length is not None and len(value) > max_length:
        raise ValueError(f"a date-time of at most {max_length} characters")
    m = _RFC3339.fullmatch(value)
    if m is None:
        raise ValueError(f"not an RFC 3339 date-time: {value[:64]!r}")
    if m["z"]:
        tz: timezone = UTC
    else:
        oh, om = int(m["oh"]), int(m["om"])
        if oh > 23 or om > 59:
            raise ValueError("offset out of range")
        sign = 1 if m["sign"] == "+" else -1
        tz = timezone(sign * timedelta(hours=oh, minutes=om))
    micro = int((m["f"] or ".0")[1:7].ljust(6, "0"))
    # datetime() range-checks month, day (leap years included), hour, minute and second.
    parsed = datetime(int(m["y"]), int(m["mo"]), int(m["d"]), int(m["h"]), int(m["mi"]), int(m["s"]), micro, tzinfo=tz)
    return _utc_representable(parsed)


def _utc_representable(value: datetime) -> datetime:
    # 9999-12-31T23:59:59-01:00 is a valid text whose instant has no UTC datetime: every caller converts to
    # UTC, where it would be an OverflowError (a 500), so it is refused here as the input error it is.
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("a date-time whose UTC instant is outside years 1 to 9999") from None
    return value


def aware_utc(value: datetime, message: str) -> datetime:
    """``value`` in UTC; a naive datetime (a model built in Python without an offset) is refused.

    Args:
        value: A parsed timestamp.
        message: What the refusal says (each field keeps the words its error details always had).

    Raises:
        ValueError: ``value`` has no UTC offset.
    """
    if value.tzinfo is None:
        raise ValueError(message)
    return _utc_representable(value).astimezone(UTC)
