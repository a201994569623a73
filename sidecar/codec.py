"""Zeek's WebSocket API, JSON format v1 ("Broker JSON"): values, events and frames.

This module only translates between JSON text and Python objects; it does no I/O, so
the WebSocket client, the tests and any fake server share it. The format is Broker's
(``docs/web-socket.rst`` in zeek/broker), checked against frames recorded from a real
Zeek 8.2.2 (``../shared/zeek-fixtures/``); docs/wire-protocol.md has the details.

Every value travels as ``{"@data-type": T, "data": V}``. Python mapping:

==============  =============================================================
@data-type      Python
==============  =============================================================
none            ``None``
boolean         ``bool``
count           :class:`Count` (an ``int`` subclass; a plain ``int`` is integer)
integer         ``int``
real            ``float``
timestamp       ``datetime`` in UTC (encoding needs a timezone-aware datetime)
timespan        ``timedelta``
string          ``str``
enum-value      :class:`Enum`
address         ``ipaddress.IPv4Address`` / ``IPv6Address``
subnet          ``ipaddress.IPv4Network`` / ``IPv6Network``
port            :class:`Port`
vector          ``tuple`` (``list`` encodes too)
set             ``frozenset`` (``set`` encodes too)
table           ``dict``
==============  =============================================================

Vectors decode to tuples so that decoded values are hashable: Zeek sends a composite
index (``set[addr, port]``) as a set of vectors. Records travel as positional vectors;
:func:`record_fields` and :func:`record_value` convert between those and field names.
Errors raise :class:`WireError` naming the JSON path of the offending value, for
example ``data[2].data[1].data[3]: count must be a non-negative integer, got 1.5``.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

FORMAT_VERSION = 1
"""First element of an encoded Zeek message: the format number (always 1)."""
EVENT_TYPE = 1
"""Second element: the Zeek message type; 1 is an event, the only type safe for clients."""
NETWORK_TIMESTAMP = 1
"""Event metadata key of the network timestamp (Zeek's ``EventMetadata::NETWORK_TIMESTAMP``)."""

_COUNT_MAX = 2**64 - 1
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


class WireError(ValueError):
    """A frame or value that breaks the protocol; ``path`` locates it in the JSON."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)


class Count(int):
    """A Zeek ``count``: an unsigned 64-bit integer.

    Plain ``int`` encodes as ``integer`` (signed); Zeek rejects an event whose argument
    has the wrong one of the two, so callers say which they mean.
    """

    __slots__ = ()

    def __new__(cls, value: int = 0) -> Count:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"count must be an integer, got {value!r}")
        if not 0 <= value <= _COUNT_MAX:
            raise ValueError(f"count must be in [0, 2**64-1], got {value}")
        return super().__new__(cls, value)

    def __repr__(self) -> str:
        return f"Count({int(self)})"


@dataclass(frozen=True)
class Enum:
    """A Zeek enum value, by name (``Enum("tcp")``, ``Enum("Notice::ACTION_LOG")``)."""

    name: str


_PORT_PROTOCOLS = ("tcp", "udp", "icmp", "?")


@dataclass(frozen=True)
class Port:
    """A Zeek port: number and transport protocol (``tcp``, ``udp``, ``icmp`` or ``?``)."""

    number: int
    proto: str

    def __post_init__(self) -> None:
        if isinstance(self.number, bool) or not isinstance(self.number, int):
            raise ValueError(f"port number must be an integer, got {self.number!r}")
        if not 0 <= self.number <= 65535:
            raise ValueError(f"port number must be in [0, 65535], got {self.number}")
        if self.proto not in _PORT_PROTOCOLS:
            raise ValueError(f"port protocol must be one of {_PORT_PROTOCOLS}, got {self.proto!r}")

    def __str__(self) -> str:
        return f"{self.number}/{self.proto}"


Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Subnet: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Value: TypeAlias = Any
"""Any Python value of the mapping above (recursive, hence ``Any``)."""


@dataclass(frozen=True)
class Event:
    """A Zeek event: fully qualified name, positional arguments and optional metadata.

    ``metadata`` holds (key, value) pairs; Zeek 8 adds ``(1, network timestamp)`` when
    ``EventMetadata::add_network_timestamp`` is on and sends none by default. Empty
    metadata is left out when encoding, which Zeek 7.0 requires.
    """

    name: str
    args: tuple[Value, ...] = ()
    metadata: tuple[tuple[int, Value], ...] = ()

    @property
    def network_timestamp(self) -> datetime | None:
        """The network time Zeek attached to the event, if any."""
        for key, value in self.metadata:
            if key == NETWORK_TIMESTAMP and isinstance(value, datetime):
                return value
        return None


@dataclass(frozen=True)
class Ack:
    """The server's answer to the subscriptions: its endpoint id and version."""

    endpoint: str
    version: str


@dataclass(frozen=True)
class ErrorFrame:
    """An error the server reports, e.g. ``deserialization_failed``, with context."""

    code: str
    context: str


@dataclass(frozen=True)
class DataMessage:
    """A Zeek event published to a topic the client subscribed to."""

    topic: str
    event: Event


ServerFrame: TypeAlias = Ack | ErrorFrame | DataMessage


# -- value names --------------------------------------------------------------------------


def data_type(value: Value) -> str:
    """The ``@data-type`` a Python value encodes as; WireError for unsupported types."""
    # Order matters: bool is an int, Count is an int, datetime is a date.
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, Count):
        return "count"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "real"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Enum):
        return "enum-value"
    if isinstance(value, Port):
        return "port"
    if isinstance(value, datetime):
        return "timestamp"
    if isinstance(value, timedelta):
        return "timespan"
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return "address"
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return "subnet"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, set | frozenset):
        return "set"
    if isinstance(value, list | tuple):
        return "vector"
    raise WireError("", f"no Broker data type for Python {type(value).__name__}")


def _show(value: Any) -> str:
    """A short rendering of a JSON value for error messages."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _child(path: str, index: int) -> str:
    """Path of element ``index`` inside the ``data`` array of the value at ``path``."""
    return f"{path}.data[{index}]" if path else f"data[{index}]"


# -- time ---------------------------------------------------------------------------------

# re.ASCII: \d must not match other scripts' digits, which int() would accept.
_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?Z?", re.ASCII
)
_TIMESPAN = re.compile(r"(-?\d+)(ns|us|ms|s|min|h|d)", re.ASCII)
_NS_PER = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "min": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}


def _ns_to_us(ns: int) -> int:
    """Nanoseconds to microseconds, rounding half to even (Python's time resolution)."""
    us, rest = divmod(ns, 1000)
    if rest > 500 or (rest == 500 and us % 2):
        us += 1
    return us


def _format_timestamp(value: datetime, path: str) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise WireError(path, "timestamp must be a timezone-aware datetime (Zeek reads UTC)")
    t = value.astimezone(UTC)
    # Broker writes milliseconds; finer times keep microseconds (its parser reads up to 9).
    us = t.microsecond
    fraction = f"{us // 1000:03d}" if us % 1000 == 0 else f"{us:06d}"
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
        f".{fraction}"
    )


def _parse_timestamp(text: str, path: str) -> datetime:
    match = _TIMESTAMP.fullmatch(text)
    if not match:
        raise WireError(
            path, f"timestamp must look like 2024-12-04T08:13:20.500, got {_show(text)}"
        )
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    try:
        base = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise WireError(path, f"invalid timestamp {_show(text)}: {exc}") from None
    digits = match.group(7) or ""
    ns = int(digits.ljust(9, "0")) if digits else 0
    return base + timedelta(microseconds=_ns_to_us(ns))


def _format_timespan(value: timedelta) -> str:
    # Like Broker: an integer in the coarsest of us/ms/s that loses nothing; zero is "0s".
    us = value // timedelta(microseconds=1)
    if us == 0:
        return "0s"
    if us % 1000:
        return f"{us}us"
    if us % 1_000_000:
        return f"{us // 1000}ms"
    return f"{us // 1_000_000}s"


def _parse_timespan(text: str, path: str) -> timedelta:
    match = _TIMESPAN.fullmatch(text)
    if not match:
        raise WireError(
            path, f"timespan must be an integer with unit ns/us/ms/s/min/h/d, got {_show(text)}"
        )
    ns = int(match.group(1)) * _NS_PER[match.group(2)]
    try:
        return timedelta(microseconds=_ns_to_us(ns))
    except OverflowError:
        raise WireError(path, f"timespan out of range: {_show(text)}") from None


# -- encoding -----------------------------------------------------------------------------


def encode_value(value: Value, path: str = "value") -> dict[str, Any]:
    """The ``{"@data-type", "data"}`` object of a Python value (see the module table).

    ``path`` names the value in error messages (``args[3][1]`` ...).
    """
    try:
        kind = data_type(value)
    except WireError as exc:
        raise WireError(path, exc.reason) from None
    return {"@data-type": kind, "data": _ENCODERS[kind](value, path)}


def _encode_count(value: Count, path: str) -> int:
    return int(value)


def _encode_integer(value: int, path: str) -> int:
    if not _INT_MIN <= value <= _INT_MAX:
        raise WireError(
            path, f"integer must fit in 64 signed bits (use Count for counts), got {value}"
        )
    return int(value)


def _encode_real(value: float, path: str) -> float:
    # JSON has no NaN/Infinity and Broker rejects them; say so here, not in Zeek's log.
    if not math.isfinite(value):
        raise WireError(path, f"real must be finite, got {value}")
    return float(value)


def _encode_vector(value: Sequence[Value], path: str) -> list[dict[str, Any]]:
    return [encode_value(item, f"{path}[{i}]") for i, item in enumerate(value)]


def _encode_set(value: Iterable[Value], path: str) -> list[dict[str, Any]]:
    items = [encode_value(item, f"{path}{{}}") for item in value]
    # Sets have no order; sorting the JSON makes frames reproducible.
    return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))


def _encode_table(value: Mapping[Value, Value], path: str) -> list[dict[str, Any]]:
    return [
        {
            "key": encode_value(key, f"{path}[{key!r}].key"),
            "value": encode_value(item, f"{path}[{key!r}]"),
        }
        for key, item in value.items()
    ]


_ENCODERS = {
    "none": lambda value, path: {},
    "boolean": lambda value, path: bool(value),
    "count": _encode_count,
    "integer": _encode_integer,
    "real": _encode_real,
    "string": lambda value, path: str(value),
    "enum-value": lambda value, path: value.name,
    "port": lambda value, path: str(value),
    "timestamp": _format_timestamp,
    "timespan": lambda value, path: _format_timespan(value),
    "address": lambda value, path: value.compressed,
    "subnet": lambda value, path: value.with_prefixlen,
    "table": _encode_table,
    "set": _encode_set,
    "vector": _encode_vector,
}


def event_frame(topic: str, event: Event) -> dict[str, Any]:
    """The JSON object of a data message carrying ``event`` to ``topic``."""
    if not isinstance(topic, str) or not topic:
        raise WireError("topic", f"topic must be a non-empty string, got {_show(topic)}")
    if not isinstance(event.name, str) or not event.name:
        raise WireError("event", f"event name must be a non-empty string, got {_show(event.name)}")
    body = [
        encode_value(event.name, "event.name"),
        encode_value(tuple(event.args), "args"),
    ]
    if event.metadata:
        try:
            pairs = tuple((Count(key), value) for key, value in event.metadata)
        except (TypeError, ValueError) as exc:
            raise WireError(
                "metadata", f"entries must be (count key, value) pairs: {exc}"
            ) from None
        body.append(encode_value(pairs, "metadata"))
    return {
        "type": "data-message",
        "topic": topic,
        "@data-type": "vector",
        "data": [
            encode_value(Count(FORMAT_VERSION)),
            encode_value(Count(EVENT_TYPE)),
            {"@data-type": "vector", "data": body},
        ],
    }


def _dumps(obj: Any) -> str:
    # Compact and UTF-8: Broker accepts both, and frames stay small.
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encode_event(topic: str, event: Event) -> str:
    """The text frame that publishes ``event`` to ``topic``."""
    return _dumps(event_frame(topic, event))


def subscription_frame(topics: Iterable[str]) -> str:
    """The client's first frame: the JSON array of topic prefixes it subscribes to."""
    topics = list(topics)
    for i, topic in enumerate(topics):
        if not isinstance(topic, str) or not topic:
            raise WireError(f"[{i}]", f"topic must be a non-empty string, got {_show(topic)}")
    return _dumps(topics)


# -- decoding -----------------------------------------------------------------------------


def decode_value(obj: Any, path: str = "value") -> Value:
    """The Python value of a ``{"@data-type", "data"}`` object (already parsed JSON)."""
    if not isinstance(obj, dict):
        raise WireError(path, f"expected a JSON object with @data-type and data, got {_show(obj)}")
    if "@data-type" not in obj:
        raise WireError(path, "missing key @data-type")
    if "data" not in obj:
        raise WireError(path, "missing key data")
    kind = obj["@data-type"]
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise WireError(path, f"unknown @data-type {_show(kind)}")
    return decoder(obj["data"], path)


def _expect(data: Any, kind: type, what: str, path: str) -> None:
    if not isinstance(data, kind):
        raise WireError(path, f"{what}, got {_json_kind(data)} {_show(data)}")


def _decode_none(data: Any, path: str) -> None:
    if data != {}:
        raise WireError(path, f"none must carry an empty object, got {_show(data)}")
    return None


def _decode_boolean(data: Any, path: str) -> bool:
    if not isinstance(data, bool):
        raise WireError(path, f"boolean must be true or false, got {_show(data)}")
    return data


def _decode_count(data: Any, path: str) -> Count:
    if isinstance(data, bool) or not isinstance(data, int) or not 0 <= data <= _COUNT_MAX:
        raise WireError(path, f"count must be a non-negative integer, got {_show(data)}")
    return Count(data)


def _decode_integer(data: Any, path: str) -> int:
    if isinstance(data, bool) or not isinstance(data, int) or not _INT_MIN <= data <= _INT_MAX:
        raise WireError(path, f"integer must be a 64-bit signed integer, got {_show(data)}")
    return data


def _decode_real(data: Any, path: str) -> float:
    # Broker only takes JSON numbers with a fraction or exponent as real ("1" is an error
    # there), and Zeek always sends them so; holding clients to the same rule here keeps
    # our own frames honest.
    if not isinstance(data, float):
        raise WireError(path, f"real must be a JSON number with a decimal point, got {_show(data)}")
    return data


def _decode_string(data: Any, path: str) -> str:
    _expect(data, str, "string must be a JSON string", path)
    return data


def _decode_enum(data: Any, path: str) -> Enum:
    _expect(data, str, "enum-value must be a JSON string", path)
    return Enum(data)


def _decode_timestamp(data: Any, path: str) -> datetime:
    _expect(data, str, "timestamp must be a string", path)
    return _parse_timestamp(data, path)


def _decode_timespan(data: Any, path: str) -> timedelta:
    _expect(data, str, "timespan must be a string", path)
    return _parse_timespan(data, path)


def _decode_address(data: Any, path: str) -> Address:
    _expect(data, str, "address must be a string", path)
    try:
        return ipaddress.ip_address(data)
    except ValueError:
        raise WireError(path, f"not an IPv4 or IPv6 address: {_show(data)}") from None


def _decode_subnet(data: Any, path: str) -> Subnet:
    _expect(data, str, "subnet must be a string", path)
    if "/" not in data:
        raise WireError(path, f"subnet must be ADDRESS/PREFIX, got {_show(data)}")
    try:
        # Zeek masks the host bits of a subnet; so does strict=False.
        return ipaddress.ip_network(data, strict=False)
    except ValueError:
        raise WireError(path, f"not a subnet: {_show(data)}") from None


_PORT = re.compile(r"(\d{1,5})/(tcp|udp|icmp|\?)", re.ASCII)


def _decode_port(data: Any, path: str) -> Port:
    _expect(data, str, "port must be a string", path)
    match = _PORT.fullmatch(data)
    if not match or int(match.group(1)) > 65535:
        raise WireError(
            path, f"port must look like 443/tcp (tcp, udp, icmp or ?), got {_show(data)}"
        )
    return Port(int(match.group(1)), match.group(2))


def _decode_vector(data: Any, path: str) -> tuple[Value, ...]:
    _expect(data, list, "vector must be a JSON array", path)
    return tuple(decode_value(item, _child(path, i)) for i, item in enumerate(data))


def _hashable(value: Value, path: str) -> Value:
    try:
        hash(value)
    except TypeError:
        raise WireError(path, "a table cannot be a set element or a table key") from None
    return value


def _decode_set(data: Any, path: str) -> frozenset[Value]:
    _expect(data, list, "set must be a JSON array", path)
    return frozenset(
        _hashable(decode_value(item, _child(path, i)), _child(path, i))
        for i, item in enumerate(data)
    )


def _decode_table(data: Any, path: str) -> dict[Value, Value]:
    _expect(data, list, "table must be a JSON array of {key, value} objects", path)
    table: dict[Value, Value] = {}
    for i, entry in enumerate(data):
        where = _child(path, i)
        if not isinstance(entry, dict) or "key" not in entry or "value" not in entry:
            raise WireError(
                where, f"table entry must be an object with key and value, got {_show(entry)}"
            )
        key = _hashable(decode_value(entry["key"], f"{where}.key"), f"{where}.key")
        table[key] = decode_value(entry["value"], f"{where}.value")
    return table


_DECODERS = {
    "none": _decode_none,
    "boolean": _decode_boolean,
    "count": _decode_count,
    "integer": _decode_integer,
    "real": _decode_real,
    "string": _decode_string,
    "enum-value": _decode_enum,
    "timestamp": _decode_timestamp,
    "timespan": _decode_timespan,
    "address": _decode_address,
    "subnet": _decode_subnet,
    "port": _decode_port,
    "vector": _decode_vector,
    "set": _decode_set,
    "table": _decode_table,
}

DATA_TYPES = frozenset(_DECODERS)
"""Every ``@data-type`` of the JSON v1 format."""


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _load_json(text: str | bytes | bytearray) -> Any:
    if isinstance(text, bytes | bytearray | memoryview):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError("frame", f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    if not isinstance(text, str):
        raise WireError("frame", f"expected text, got {type(text).__name__}")
    try:
        # strict=False: Broker writes control characters other than \b\f\n\r\t raw.
        return json.loads(text, parse_constant=_reject_constant, strict=False)
    except json.JSONDecodeError as exc:
        raise WireError(
            "frame", f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:
        raise WireError("frame", f"not JSON: {exc}") from None
    except RecursionError:
        raise WireError("frame", "not JSON this decoder accepts: nested too deeply") from None


def _string_key(obj: dict[str, Any], key: str) -> str:
    if key not in obj:
        raise WireError(key, "missing key")
    value = obj[key]
    if not isinstance(value, str):
        raise WireError(key, f"must be a string, got {_json_kind(value)} {_show(value)}")
    return value


def decode_event(obj: dict[str, Any], path: str = "") -> Event:
    """The Zeek event inside a data message (``obj`` holds its @data-type and data).

    The layout is ``[count 1, count 1, [name, [args...], [metadata]?]]``.
    """
    try:
        payload = decode_value(obj, path)
    except RecursionError:
        raise WireError(path or "data", "nested too deeply") from None
    where = path or "data"
    if not isinstance(payload, tuple):
        raise WireError(where, f"a Zeek event is a vector, got {_show(obj.get('@data-type'))}")
    if len(payload) != 3:
        raise WireError(
            where, f"a Zeek event is [format, type, [name, args]], got {len(payload)} elements"
        )
    version, kind, body = payload
    if not isinstance(version, Count) or version != FORMAT_VERSION:
        raise WireError(_child(path, 0), f"format must be count {FORMAT_VERSION}, got {version!r}")
    if not isinstance(kind, Count) or kind != EVENT_TYPE:
        raise WireError(
            _child(path, 1), f"message type must be count {EVENT_TYPE} (event), got {kind!r}"
        )
    body_path = _child(path, 2)
    if not isinstance(body, tuple) or len(body) not in (2, 3):
        raise WireError(
            body_path, "event must be the vector [name, args] or [name, args, metadata]"
        )
    name, args = body[0], body[1]
    if not isinstance(name, str) or not name:
        raise WireError(
            _child(body_path, 0), f"event name must be a non-empty string, got {name!r}"
        )
    if not isinstance(args, tuple):
        raise WireError(_child(body_path, 1), f"event arguments must be a vector, got {args!r}")
    metadata: tuple[tuple[int, Value], ...] = ()
    if len(body) == 3:
        meta_path = _child(body_path, 2)
        entries = body[2]
        if not isinstance(entries, tuple):
            raise WireError(meta_path, "event metadata must be a vector of [count, value] vectors")
        for i, entry in enumerate(entries):
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], Count)):
                raise WireError(_child(meta_path, i), "metadata entry must be [count, value]")
        metadata = tuple((int(key), value) for key, value in entries)
    return Event(name, args, metadata)


def decode_frame(text: str | bytes) -> ServerFrame:
    """Decode one text frame the server sent: an ack, an error or a data message.

    Limiting the frame size is the WebSocket client's job; this only parses.
    """
    obj = _load_json(text)
    if not isinstance(obj, dict):
        raise WireError("frame", f"expected a JSON object, got {_json_kind(obj)} {_show(obj)}")
    kind = _string_key(obj, "type")
    if kind == "ack":
        return Ack(_string_key(obj, "endpoint"), _string_key(obj, "version"))
    if kind == "error":
        return ErrorFrame(_string_key(obj, "code"), _string_key(obj, "context"))
    if kind == "data-message":
        return DataMessage(_string_key(obj, "topic"), decode_event(obj))
    raise WireError("type", f"unknown frame type {_show(kind)}")


def decode_subscriptions(text: str | bytes) -> tuple[str, ...]:
    """The topics of a client's first frame (for fakes of the server in tests)."""
    obj = _load_json(text)
    if not isinstance(obj, list):
        raise WireError("frame", "subscriptions not an array")
    for i, topic in enumerate(obj):
        if not isinstance(topic, str):
            raise WireError(f"[{i}]", f"topic must be a string, got {_show(topic)}")
    return tuple(obj)


# -- records ------------------------------------------------------------------------------


def record_fields(value: Value, names: Sequence[str], path: str = "record") -> dict[str, Value]:
    """Name the fields of a record that arrived as a positional vector.

    Zeek sends every field in declaration order, an unset ``&optional`` one as none.
    """
    if not isinstance(value, tuple):
        raise WireError(path, f"a record travels as a vector, got {data_type(value)}")
    if len(value) != len(names):
        raise WireError(
            path, f"record has {len(names)} fields ({', '.join(names)}), got {len(value)}"
        )
    return dict(zip(names, value, strict=True))


def record_value(names: Sequence[str], fields: Mapping[str, Value]) -> tuple[Value, ...]:
    """The positional vector of a record; fields absent from ``fields`` go as none (unset)."""
    unknown = set(fields) - set(names)
    if unknown:
        raise WireError("record", f"unknown field(s) {', '.join(sorted(unknown))}")
    return tuple(fields.get(name) for name in names)
