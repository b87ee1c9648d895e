"""The door: every check an item's parts pass before anything is stored.

One function per concern, each raising `InputError` with what to pass instead: text and
ids (no lone surrogates), roles, timestamps (POSIX seconds; other epochs converted when
unambiguous), metadata (plain JSON data, bounded depth and size), and the metadata keys
the library itself reads (`check_reserved`). `ContextItem.create` / `.checked` call them.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import Enum
from typing import Any

from tiered_context.errors import InputError

__all__ = ["check_id", "check_reserved", "check_role", "check_text", "plain_metadata", "to_timestamp"]

log = logging.getLogger("tiered_context")


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(value: str, what: str) -> str:
    """`value` as a plain str, or `InputError` naming `what` if it holds a lone surrogate
    (not Unicode text: no encoder, tokenizer or store can write it). Everything else that
    is valid Unicode passes: control characters, NUL, RTL marks, emoji."""
    bad = _SURROGATE.search(value)
    if bad is not None:
        raise InputError(
            f"{what} holds a lone surrogate {bad.group()!r} at index {bad.start()}: not valid Unicode; "
            "decode bytes with errors='replace' (or fix the UTF-16 pair) before passing it"
        )
    return value if type(value) is str else str.__str__(value)


def _show(value: Any, limit: int = 60) -> str:
    """A short repr of a caller's value for an error message (never raises)."""
    try:
        text = repr(value)
    except Exception:  # e.g. an int of more than 4300 digits
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_id(value: Any, what: str) -> str:
    """`value` if it is a non-empty str of valid Unicode, else `InputError` naming `what`."""
    if not isinstance(value, str) or not value:
        raise InputError(f"{what} must be a non-empty str, got {type(value).__name__} {_show(value)}; "
                         "convert it with str() or leave id=None for a content hash")
    return check_text(value, what)


def check_role(role: Any) -> str:
    """The role's str value (a `Role` or any non-empty str), else `InputError`."""
    value = role.value if isinstance(role, Enum) else role
    if not isinstance(value, str) or not value:
        raise InputError(f"role must be a non-empty str such as 'user', 'assistant', 'tool' or a Role, "
                         f"got {type(role).__name__} {_show(role)}")
    return check_text(value, "role")


#: POSIX seconds of 0001-01-01 and 10000-01-01 (UTC): the dates Python can represent.
MIN_TIMESTAMP = -62_135_596_800.0
MAX_TIMESTAMP = 253_402_300_800.0
#: Epochs in other units that are converted: a number that is no date as seconds, and
#: read in one of these units falls in 2001-09-09..2286-11-20 (1e9..1e10 seconds). The
#: windows are 1000x apart and start above the seconds range, so a number matches at most
#: one reading: it is converted only when it is unambiguous.
_UNITS = (("milliseconds", 1e3), ("microseconds", 1e6), ("nanoseconds", 1e9))
_PLAUSIBLE = (1e9, 1e10)
_converted_units: set[str] = set()


def to_timestamp(value: Any) -> float:
    """POSIX seconds (UTC) for `value`, or `InputError` saying what to pass.

    * a number of seconds between years 1 and 9999 (small numbers are fine: many callers
      use 0, 1, 2, ... as an ordering);
    * a larger number that is unambiguously a millisecond, microsecond or nanosecond epoch
      (read in that unit it falls in 2001..2286: JavaScript's ``Date.now()``, ``time.time_ns()``)
      is converted to seconds; the first conversion per unit is logged at warning, naming
      the unit. Other numbers outside years 1..9999 are refused (e.g. 5e11: year 17814 as
      seconds, 1985 as milliseconds);
    * a `datetime`: an aware one is exact; a naive one is local time (Python's own
      rule, as `datetime.timestamp` reads it: ``datetime.now()`` is right, a naive UTC
      time is not: pass ``tzinfo=timezone.utc``);
    * NaN, infinities, bools, strings and dates outside years 1..9999 are refused.
    """
    has_timestamp = not isinstance(value, numbers.Number) and callable(getattr(value, "timestamp", None))
    if isinstance(value, datetime) or has_timestamp:  # datetime, pandas / arrow / pendulum times
        try:
            seconds = float(value.timestamp())
        except (OverflowError, OSError, ValueError, TypeError) as exc:
            raise InputError(f"timestamp {_show(value)} has no POSIX time ({exc}); pass an aware datetime "
                             "(tzinfo=timezone.utc) between years 1 and 9999") from None
        if seconds == MAX_TIMESTAMP:  # datetime.max rounds up to 10000-01-01 as a float
            seconds = math.nextafter(MAX_TIMESTAMP, 0.0)
        if MIN_TIMESTAMP <= seconds < MAX_TIMESTAMP:
            return seconds
        raise InputError(f"timestamp {_show(value)} is outside years 1..9999 in UTC; pass a datetime in that range")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"timestamp must be POSIX seconds (a finite float, e.g. time.time()) or a datetime, "
                         f"got {type(value).__name__} {_show(value)}")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise InputError(f"timestamp must be a finite POSIX time in seconds (e.g. time.time()), got {_show(value)}")
    if MIN_TIMESTAMP <= seconds < MAX_TIMESTAMP:
        return seconds
    for unit, factor in _UNITS:
        if _PLAUSIBLE[0] * factor <= seconds < _PLAUSIBLE[1] * factor:
            if unit not in _converted_units:
                _converted_units.add(unit)
                log.warning("timestamp %r read as %s since 1970 and converted to seconds; pass POSIX seconds "
                            "(time.time(), or Date.now() / 1000)", value, unit)
            return seconds / factor
    raise InputError(
        f"timestamp {_show(value)} is outside years 1..9999 as POSIX seconds, and is not clearly a "
        "millisecond, microsecond or nanosecond epoch (2001..2286 in that unit); pass seconds "
        "since 1970 (time.time(), or Date.now() / 1000) or a datetime"
    )


#: How deep metadata may nest (metadata itself is level 1), and how many values it may hold.
MAX_METADATA_DEPTH = 32
MAX_METADATA_VALUES = 100_000


def plain_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """A plain-data copy of `metadata`, or `InputError` naming the key path at fault.

    Plain data is what the archive stores (JSON): dicts with str keys, lists, tuples,
    str, int, float, bool and None, nested at most `MAX_METADATA_DEPTH` levels. Numbers
    of other types (numpy scalars, enums) become int / float, sets become sorted lists,
    and other objects (datetime, UUID, Decimal, ...) become their ``str()``, which is what
    the stores wrote for them anyway, so an item reads the same before and after reopen.
    Circular structures, non-str keys, bytes and lone surrogates are refused; reserved
    keys are type-checked by `check_reserved`.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InputError(f"metadata must be a dict with str keys, got {type(metadata).__name__}")
    budget = [MAX_METADATA_VALUES]
    out = _plain(metadata, "metadata", 1, set(), budget)
    check_reserved(out)
    return out


def _plain(value: Any, path: str, depth: int, active: set[int], budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise InputError(f"metadata holds more than {MAX_METADATA_VALUES} values (at {path}); "
                         "keep large payloads out of metadata (store them as the item's text, or elsewhere)")
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, str):
        return check_text(value, path)
    if isinstance(value, numbers.Integral):
        if not -(2**63) <= value < 2**63:
            raise InputError(f"{path} is an int beyond 64 bits, which stores cannot hold; pass it as a str")
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise InputError(f"{path} is bytes; metadata is JSON: decode it (.decode()) or base64-encode it first")
    if not isinstance(value, (Mapping, list, tuple, set, frozenset)):
        try:
            text = str(value)
        except Exception as exc:
            raise InputError(f"{path} ({type(value).__name__}) cannot be stored: str() raised {_show(exc, 80)}; "
                             "pass plain data (str, numbers, lists, dicts)") from None
        return check_text(text, path)
    if depth > MAX_METADATA_DEPTH:
        raise InputError(f"{path} nests deeper than {MAX_METADATA_DEPTH} levels; flatten it, or store the "
                         "structure as a JSON string")
    if id(value) in active:
        raise InputError(f"{path} contains itself (a circular reference); metadata must be JSON-serialisable "
                         "plain data: pass a copy without the cycle")
    active.add(id(value))
    try:
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InputError(f"{path} has a key of type {type(key).__name__} ({_show(key)}); metadata must "
                                     "be JSON-serialisable: keys are str (convert them with str())")
                key = check_text(key, f"a key of {path}")
                out[key] = _plain(item, f"{path}[{key!r}]", depth + 1, active, budget)
            return out
        values = sorted(value, key=_show) if isinstance(value, (set, frozenset)) else value
        made = [_plain(v, f"{path}[{n}]", depth + 1, active, budget) for n, v in enumerate(values)]
        return tuple(made) if isinstance(value, tuple) else made
    finally:
        active.discard(id(value))


def _is_opt_str(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_str_list(v: Any) -> bool:
    return v is None or (isinstance(v, (list, tuple)) and all(isinstance(c, str) for c in v))


def _is_mapping(v: Any) -> bool:
    return isinstance(v, Mapping)


#: Metadata keys the library reads from items a caller can put, each with its check and
#: what to pass. (Keys it reads only from records it writes itself, e.g. a summary's
#: ``children`` or a checkpoint's ``state``, are not reserved: callers may use those names.)
RESERVED_METADATA: dict[str, tuple[Callable[[Any], bool], str]] = {
    "tool_call_ids": (_is_str_list, "a list of str (the ids of the tool calls this message makes)"),
    "tool_call_id": (_is_opt_str, "a str (the id of the tool call this message answers)"),
    "speaker": (_is_opt_str, "a str (who said it; shown before the text)"),
    "name": (_is_opt_str, "a str (the author's name; shown before the text)"),
    "first_seq": (_is_int, "an int (set by the summarizer)"),
    "last_seq": (_is_int, "an int (set by the summarizer)"),
    "summary_level": (_is_int, "an int (set by the summarizer)"),
    "from_ts": (_is_number, "a finite number (set by the summarizer)"),
    "lc_id": (_is_opt_str, "a str (the LangChain message id)"),
    "lc_message": (_is_mapping, "a dict (the serialised LangChain message)"),
    "lc_clear": (_is_int, "an int (a LangChain history generation)"),
    "lc_document_metadata": (_is_mapping, "a dict (the LangChain document's metadata)"),
    "lc_document_id": (_is_opt_str, "a str (the LangChain document id)"),
    "li_message": (_is_mapping, "a dict (the serialised LlamaIndex message)"),
}


def check_reserved(metadata: Mapping[str, Any]) -> None:
    """`InputError` if a key the library reads (`RESERVED_METADATA`) holds the wrong type.

    Cheap (a lookup per key), so the assembler also runs it on items read back from an
    archive written before this check existed.
    """
    for key in metadata.keys() & RESERVED_METADATA.keys():
        check, what = RESERVED_METADATA[key]
        value = metadata[key]
        if not check(value):
            raise InputError(f"metadata[{key!r}] must be {what}, got {type(value).__name__} {_show(value)}; "
                             f"fix the value or use another key name")
