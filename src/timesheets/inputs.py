"""Parsing the date and hours forms that the reference clients send (see the contract's
"Accepted input"). Anything else is refused, never coerced or clamped."""

import datetime as dt
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

# re.ASCII: \d must not match other scripts' digits ("٧" would otherwise read as 7).
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_ISO_DATETIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)?",
    re.ASCII,
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# java.util.Date.toString(): "EEE MMM dd HH:mm:ss zzz yyyy", the zone an abbreviation (PDT, CEST),
# a GMT offset (GMT+02:00), or left out.
_JAVA_DATE = re.compile(
    rf"({'|'.join(_DAYS)}) ({'|'.join(_MONTHS)}) (\d{{1,2}}) \d{{2}}:\d{{2}}:\d{{2}}"
    r"(?: (?:[A-Z]{1,6}|GMT[+-]\d{1,2}(?::?\d{2})?))? (\d{4})",
    re.ASCII,
)
_DECIMAL = re.compile(r"\d+(\.\d+)?|\.\d+", re.ASCII)
MAX_HOUR_CENTS = 2400


class InputError(ValueError):
    """A value in a form that is not accepted; the message is shown to the client."""


def parse_work_date(value: Any) -> dt.date:
    """The calendar date as the client wrote it, never converted through another time zone."""
    if not isinstance(value, str):
        raise InputError("must be a date string such as 2017-07-10")
    text = value.strip()
    if _ISO_DATE.fullmatch(text):
        return _calendar_date(text)
    match = _ISO_DATETIME.fullmatch(text)
    if match:
        _check_datetime(text)
        return _calendar_date(match.group(1))
    match = _JAVA_DATE.fullmatch(text)
    if match:
        return _java_date(*match.groups())
    raise InputError(
        "is not a date in a known form (YYYY-MM-DD, ISO 8601, or Java's Date.toString())"
    )


def _calendar_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InputError(f"is not a calendar date: {text}") from None


def _check_datetime(text: str) -> None:
    try:
        dt.datetime.fromisoformat(text)
    except ValueError:
        raise InputError("is not a valid ISO 8601 date-time") from None


def _java_date(weekday: str, month: str, day: str, year: str) -> dt.date:
    try:
        date = dt.date(int(year), _MONTHS.index(month) + 1, int(day))
    except ValueError:
        raise InputError("is not a calendar date") from None
    if _DAYS[date.weekday()] != weekday:
        raise InputError(f"names {weekday}, but {date.isoformat()} is a {_DAYS[date.weekday()]}")
    return date


def parse_hours(value: Any) -> int:
    """Hours as hundredths (7.5 -> 750): a JSON number or a plain decimal string, 0 < h <= 24."""
    # whole hours, as most clients send them, need no Decimal
    cents = value * 100 if type(value) is int else _decimal_cents(value)
    if not 0 < cents <= MAX_HOUR_CENTS:
        raise InputError("must be more than 0 and at most 24")
    return int(cents)


def _decimal_cents(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InputError("must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError("must be a finite number")
    if isinstance(value, str) and not _DECIMAL.fullmatch(value):
        raise InputError("must be a decimal number such as 7.5")
    try:
        hours = Decimal(str(value)) if not isinstance(value, int) else Decimal(value)
    except InvalidOperation:
        raise InputError("must be a decimal number such as 7.5") from None
    cents = hours * 100
    if cents != cents.to_integral_value():
        raise InputError("may have at most two decimals")
    return cents
