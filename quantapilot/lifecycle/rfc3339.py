"""RFC 3339 ``date-time`` parsing, shared by the JSON Schema format check and the pydantic models.

One parser decides for both, so a timestamp the schema accepts is one the models can read, and the other way
round; it is implemented here because ``rfc3339-validator`` is not installed (jsonschema would then skip the
format silently).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

_RFC3339 = re.compile(
    r"^(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})[Tt](?P<h>\d{2}):(?P<mi>\d{2}):(?P<s>\d{2})(?P<f>\.\d+)?"
    r"(?:(?P<z>[Zz])|(?P<sign>[+-])(?P<oh>\d{2}):(?P<om>\d{2}))$"
)


def parse_rfc3339(value: str) -> datetime:
    """Parse an RFC 3339 ``date-time`` into an aware datetime.

    Stricter than :meth:`datetime.fromisoformat`: the offset is required, the separator is ``T`` (or ``t``),
    and every field is range-checked. Leap seconds (``:60``) are refused because a Python datetime, and so the
    database, cannot hold them; fractional digits beyond microseconds are truncated.

    Args:
        value: The text, e.g. ``2025-11-17T12:00:00Z``.

    Returns:
        The datetime with its offset.

    Raises:
        ValueError: When ``value`` is not an RFC 3339 date-time.
    """
    m = _RFC3339.match(value)
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
    return datetime(int(m["y"]), int(m["mo"]), int(m["d"]), int(m["h"]), int(m["mi"]), int(m["s"]), micro, tzinfo=tz)
