"""The Broker JSON v1 codec: every data type, the envelope, errors, and real Zeek frames."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seqwatch.sidecar.codec import (
    DATA_TYPES,
    Ack,
    Count,
    DataMessage,
    Enum,
    ErrorFrame,
    Event,
    Port,
    WireError,
    data_type,
    decode_event,
    decode_frame,
    decode_subscriptions,
    decode_value,
    encode_event,
    encode_value,
    event_frame,
    record_fields,
    record_value,
    subscription_frame,
)

# -- strategies ---------------------------------------------------------------------------

counts = st.integers(0, 2**64 - 1).map(Count)
integers = st.integers(-(2**63), 2**63 - 1)
reals = st.floats(allow_nan=False, allow_infinity=False)
timestamps = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
)
timespans = st.timedeltas(min_value=timedelta(days=-(10**6)), max_value=timedelta(days=10**6))
addresses = st.ip_addresses()
subnets = st.builds(
    lambda a, p: ipaddress.ip_network(f"{a}/{min(p, a.max_prefixlen)}", strict=False),
    addresses,
    st.integers(0, 128),
)
ports = st.builds(Port, st.integers(0, 65535), st.sampled_from(["tcp", "udp", "icmp", "?"]))
enums = st.builds(Enum, st.text(min_size=1, max_size=20))
hashable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    counts,
    integers,
    reals,
    timestamps,
    timespans,
    st.text(max_size=20),
    enums,
    addresses,
    subnets,
    ports,
)
hashables = st.recursive(
    hashable_scalars, lambda inner: st.lists(inner, max_size=4).map(tuple), max_leaves=10
)
values = st.recursive(
    hashable_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.frozensets(hashables, max_size=4),
        st.sets(hashables, max_size=4),
        st.dictionaries(hashables, inner, max_size=4),
    ),
    max_leaves=20,
)


def canonical(value):
    """What decoding gives back for a Python value: vectors as tuples, sets frozen."""
    if isinstance(value, list | tuple):
        return tuple(canonical(v) for v in value)
    if isinstance(value, set | frozenset):
        return frozenset(canonical(v) for v in value)
    if isinstance(value, dict):
        return {canonical(k): canonical(v) for k, v in value.items()}
    return value


def same(a, b) -> bool:
    """Equality that also checks types (True == Count(1) == 1 == 1.0 in Python)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a == b and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and a == 0.0:
        return str(a) == str(b)  # -0.0 stays -0.0
    return a == b


def through_json(value):
    text = json.dumps(encode_value(value), allow_nan=False)
    return decode_value(json.loads(text))


# -- round trips --------------------------------------------------------------------------


@given(values)
def test_every_value_round_trips_through_json(value):
    assert same(through_json(value), canonical(value))


@pytest.mark.parametrize(
    ("value", "kind", "data"),
    [
        (None, "none", {}),
        (True, "boolean", True),
        (Count(42), "count", 42),
        (-7, "integer", -7),
        (3.25, "real", 3.25),
        (120.0, "real", 120.0),
        (
            datetime(2024, 12, 4, 8, 13, 20, 500000, tzinfo=UTC),
            "timestamp",
            "2024-12-04T08:13:20.500",
        ),
        (datetime(2024, 12, 4, 8, 13, 20, tzinfo=UTC), "timestamp", "2024-12-04T08:13:20.000"),
        (
            datetime(2024, 12, 4, 8, 13, 20, 123456, tzinfo=UTC),
            "timestamp",
            "2024-12-04T08:13:20.123456",
        ),
        (
            datetime(2024, 12, 4, 9, 13, 20, tzinfo=timezone(timedelta(hours=1))),
            "timestamp",
            "2024-12-04T08:13:20.000",
        ),
        (timedelta(seconds=10), "timespan", "10s"),
        (timedelta(seconds=1.5), "timespan", "1500ms"),
        (timedelta(microseconds=1500), "timespan", "1500us"),
        (timedelta(minutes=1), "timespan", "60s"),
        (timedelta(0), "timespan", "0s"),
        (timedelta(seconds=-2), "timespan", "-2s"),
        ("héllo\ttab", "string", "héllo\ttab"),
        (Enum("tcp"), "enum-value", "tcp"),
        (ipaddress.ip_address("192.168.1.10"), "address", "192.168.1.10"),
        (ipaddress.ip_address("2001:0db8:0::1"), "address", "2001:db8::1"),
        (ipaddress.ip_network("10.0.0.0/8"), "subnet", "10.0.0.0/8"),
        (ipaddress.ip_network("2001:db8::/32"), "subnet", "2001:db8::/32"),
        (Port(443, "tcp"), "port", "443/tcp"),
        (Port(8, "icmp"), "port", "8/icmp"),
        (Port(0, "?"), "port", "0/?"),
    ],
)
def test_scalar_encodings(value, kind, data):
    assert data_type(value) == kind
    assert encode_value(value) == {"@data-type": kind, "data": data}


def test_containers_encode_as_the_spec_says():
    assert encode_value([Count(42), 23]) == {
        "@data-type": "vector",
        "data": [{"@data-type": "count", "data": 42}, {"@data-type": "integer", "data": 23}],
    }
    assert encode_value({"first-name": "John"}) == {
        "@data-type": "table",
        "data": [
            {
                "key": {"@data-type": "string", "data": "first-name"},
                "value": {"@data-type": "string", "data": "John"},
            }
        ],
    }
    # Sets have no order; the encoding is sorted so frames are reproducible.
    assert encode_value({"b", "a"}) == encode_value(frozenset({"a", "b"}))


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("2024-12-04T08:13:20", datetime(2024, 12, 4, 8, 13, 20, tzinfo=UTC)),
        ("2024-12-04T08:13:20Z", datetime(2024, 12, 4, 8, 13, 20, tzinfo=UTC)),
        ("2024-12-04T08:13:20.5", datetime(2024, 12, 4, 8, 13, 20, 500000, tzinfo=UTC)),
        ("2024-12-04T08:13:20.500Z", datetime(2024, 12, 4, 8, 13, 20, 500000, tzinfo=UTC)),
        ("2024-12-04T08:13:20.123456789", datetime(2024, 12, 4, 8, 13, 20, 123457, tzinfo=UTC)),
        ("2024-12-31T23:59:59.9999996", datetime(2025, 1, 1, tzinfo=UTC)),
    ],
)
def test_timestamps_zeek_style_with_or_without_fraction_and_z(text, want):
    assert decode_value({"@data-type": "timestamp", "data": text}) == want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("10s", timedelta(seconds=10)),
        ("1500ms", timedelta(seconds=1.5)),
        ("1500us", timedelta(microseconds=1500)),
        ("1500ns", timedelta(microseconds=2)),  # half to even
        ("2500ns", timedelta(microseconds=2)),
        ("2501ns", timedelta(microseconds=3)),
        ("2min", timedelta(minutes=2)),
        ("3h", timedelta(hours=3)),
        ("1d", timedelta(days=1)),
        ("0s", timedelta(0)),
        ("-5s", timedelta(seconds=-5)),
    ],
)
def test_timespan_units(text, want):
    assert decode_value({"@data-type": "timespan", "data": text}) == want


# -- errors -------------------------------------------------------------------------------


def wire_error(obj, path="value"):
    with pytest.raises(WireError) as info:
        decode_value(obj, path)
    return str(info.value)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (
            {"@data-type": "count", "data": 1.5},
            "value: count must be a non-negative integer, got 1.5",
        ),
        (
            {"@data-type": "count", "data": -1},
            "value: count must be a non-negative integer, got -1",
        ),
        (
            {"@data-type": "count", "data": True},
            "value: count must be a non-negative integer, got true",
        ),
        ({"@data-type": "count", "data": 2**64}, "count must be a non-negative integer"),
        ({"@data-type": "integer", "data": 2**63}, "integer must be a 64-bit signed integer"),
        (
            {"@data-type": "integer", "data": 1.0},
            "integer must be a 64-bit signed integer, got 1.0",
        ),
        (
            {"@data-type": "real", "data": 120},
            "real must be a JSON number with a decimal point, got 120",
        ),
        ({"@data-type": "boolean", "data": 1}, "boolean must be true or false, got 1"),
        ({"@data-type": "none", "data": None}, "none must carry an empty object, got null"),
        ({"@data-type": "string", "data": 5}, "string must be a JSON string, got number 5"),
        ({"@data-type": "timestamp", "data": "2024-12-04 08:13:20"}, "timestamp must look like"),
        ({"@data-type": "timestamp", "data": "2024-02-30T00:00:00"}, "invalid timestamp"),
        (
            {"@data-type": "timestamp", "data": "2024-12-04T08:13:20+01:00"},
            "timestamp must look like",
        ),
        ({"@data-type": "timespan", "data": "1.5s"}, "timespan must be an integer with unit"),
        ({"@data-type": "timespan", "data": "10"}, "timespan must be an integer with unit"),
        ({"@data-type": "address", "data": "10.0.0.256"}, "not an IPv4 or IPv6 address"),
        ({"@data-type": "subnet", "data": "10.0.0.0"}, "subnet must be ADDRESS/PREFIX"),
        ({"@data-type": "subnet", "data": "10.0.0.0/33"}, "not a subnet"),
        ({"@data-type": "port", "data": "70000/tcp"}, "port must look like 443/tcp"),
        ({"@data-type": "port", "data": "80/sctp"}, "port must look like 443/tcp"),
        ({"@data-type": "port", "data": "\u0664\u0664\u0663/tcp"}, "port must look like 443/tcp"),
        ({"@data-type": "vector", "data": {}}, "vector must be a JSON array, got object"),
        (
            {"@data-type": "table", "data": [{"key": {"@data-type": "none", "data": {}}}]},
            "table entry must be an object with key and value",
        ),
        (
            {"@data-type": "set", "data": [{"@data-type": "table", "data": []}]},
            "value.data[0]: a table cannot be a set element",
        ),
        ({"@data-type": "float", "data": 1.0}, 'value: unknown @data-type "float"'),
        ({"data": 1}, "value: missing key @data-type"),
        ({"@data-type": "count"}, "value: missing key data"),
        ([1, 2], "value: expected a JSON object with @data-type and data, got [1, 2]"),
    ],
)
def test_decode_errors_say_what_and_where(obj, message):
    assert message in wire_error(obj)


def test_error_paths_point_into_nested_values():
    obj = {
        "@data-type": "vector",
        "data": [
            {"@data-type": "count", "data": 1},
            {
                "@data-type": "table",
                "data": [
                    {
                        "key": {"@data-type": "string", "data": "k"},
                        "value": {
                            "@data-type": "vector",
                            "data": [{"@data-type": "port", "data": "x"}],
                        },
                    }
                ],
            },
        ],
    }
    assert wire_error(obj, "data").startswith("data.data[1].data[0].value.data[0]: port must")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "value: real must be finite, got nan"),
        (float("inf"), "value: real must be finite, got inf"),
        (2**63, "integer must fit in 64 signed bits (use Count for counts)"),
        (datetime(2024, 1, 1), "timestamp must be a timezone-aware datetime"),
        (object(), "value: no Broker data type for Python object"),
        ([1, [2, float("nan")]], "value[1][1]: real must be finite"),
    ],
)
def test_encode_errors(value, message):
    with pytest.raises(WireError) as info:
        encode_value(value)
    assert message in str(info.value)


def test_count_and_port_validate_themselves():
    for bad in (-1, 2**64, True, 1.0):
        with pytest.raises(ValueError):
            Count(bad)
    with pytest.raises(ValueError):
        Port(65536, "tcp")
    with pytest.raises(ValueError):
        Port(80, "sctp")
    assert repr(Count(3)) == "Count(3)" and str(Port(53, "udp")) == "53/udp"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "frame: not JSON: Expecting property name enclosed in double quotes"),
        (
            '{"type": "ack", "endpoint": "x", "version": NaN}',
            "frame: not JSON: NaN is not valid JSON",
        ),
        (b"\xff\xfe", "frame: not UTF-8 text"),
        ("[1]", "frame: expected a JSON object, got array [1]"),
        ('{"endpoint": "x"}', "type: missing key"),
        ('{"type": "ack", "endpoint": "x"}', "version: missing key"),
        ('{"type": "error", "code": 3, "context": "x"}', "code: must be a string, got number 3"),
        ('{"type": "hello"}', 'type: unknown frame type "hello"'),
        ('{"type": "data-message", "@data-type": "count", "data": 1}', "topic: missing key"),
        (
            '{"type": "data-message", "topic": "/t", "@data-type": "count", "data": 1}',
            'data: a Zeek event is a vector, got "count"',
        ),
        ("[" * 5000 + "]" * 5000, "frame: not JSON"),
    ],
)
def test_frame_errors(text, message):
    with pytest.raises(WireError) as info:
        decode_frame(text)
    assert message in str(info.value)


def envelope(*items):
    return {"type": "data-message", "topic": "/t", "@data-type": "vector", "data": list(items)}


def c(n):
    return {"@data-type": "count", "data": n}


def s(text):
    return {"@data-type": "string", "data": text}


def vec(*items):
    return {"@data-type": "vector", "data": list(items)}


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (
            envelope(c(1), c(1)),
            "data: a Zeek event is [format, type, [name, args]], got 2 elements",
        ),
        (envelope(c(2), c(1), vec(s("e"), vec())), "data[0]: format must be count 1, got Count(2)"),
        (
            envelope({"@data-type": "integer", "data": 1}, c(1), vec(s("e"), vec())),
            "data[0]: format must be count 1, got 1",
        ),
        (envelope(c(1), c(2), vec(s("e"), vec())), "data[1]: message type must be count 1 (event)"),
        (envelope(c(1), c(1), vec(s("e"))), "data[2]: event must be the vector [name, args]"),
        (
            envelope(c(1), c(1), vec(c(5), vec())),
            "data[2].data[0]: event name must be a non-empty string",
        ),
        (
            envelope(c(1), c(1), vec(s("e"), c(1))),
            "data[2].data[1]: event arguments must be a vector",
        ),
        (
            envelope(c(1), c(1), vec(s("e"), vec(), vec(vec(s("k"), c(1))))),
            "data[2].data[2].data[0]: metadata entry must be [count, value]",
        ),
        (
            envelope(c(1), c(1), vec(s("e"), vec(c(1.5)))),
            "data[2].data[1].data[0]: count must be a non-negative integer, got 1.5",
        ),
    ],
)
def test_event_envelope_errors(obj, message):
    with pytest.raises(WireError) as info:
        decode_event(obj)
    assert message in str(info.value)


def test_event_round_trip_with_metadata():
    when = datetime(2026, 12, 4, 19, 58, 16, 966000, tzinfo=UTC)
    event = Event("Mod::ev", (Count(1), "x", (1.5, 2.5)), ((1, when),))
    frame = decode_frame(encode_event("/seqwatch/x", event))
    assert frame == DataMessage("/seqwatch/x", event)
    assert frame.event.network_timestamp == when
    assert Event("Mod::ev").network_timestamp is None
    # No metadata: the body has exactly [name, args] (what Zeek 7.0 understands).
    assert len(event_frame("/t", Event("Mod::ev"))["data"][2]["data"]) == 2


def test_encoder_refuses_bad_topics_names_and_metadata():
    with pytest.raises(WireError, match="topic must be a non-empty string"):
        encode_event("", Event("a"))
    with pytest.raises(WireError, match="event name must be a non-empty string"):
        encode_event("/t", Event(""))
    with pytest.raises(WireError, match="metadata: entries must be"):
        encode_event("/t", Event("a", (), ((-1, "x"),)))
    with pytest.raises(WireError, match=r"args\[1\]: real must be finite"):
        encode_event("/t", Event("a", (1.0, float("nan"))))


def test_subscriptions():
    assert subscription_frame(["/seqwatch/features", "/seqwatch/netcontrol"]) == (
        '["/seqwatch/features","/seqwatch/netcontrol"]'
    )
    assert decode_subscriptions('["/a", "/b"]') == ("/a", "/b")
    with pytest.raises(WireError, match="subscriptions not an array"):
        decode_subscriptions('{"not": "an array"}')
    with pytest.raises(WireError, match=r"\[1\]: topic must be a string"):
        decode_subscriptions('["/a", 1]')
    with pytest.raises(WireError, match=r"\[0\]: topic must be a non-empty string"):
        subscription_frame([""])


def test_records_travel_as_positional_vectors():
    names = ("host", "note", "score")
    assert record_value(names, {"host": "h", "note": "x"}) == ("h", "x", None)
    assert record_fields(("h", "x", None), names) == {"host": "h", "note": "x", "score": None}
    with pytest.raises(WireError, match=r"record has 3 fields \(host, note, score\), got 2"):
        record_fields(("h", "x"), names)
    with pytest.raises(WireError, match="a record travels as a vector, got string"):
        record_fields("h", names)
    with pytest.raises(WireError, match="unknown field"):
        record_value(names, {"port": 1})


def test_data_types_are_the_specs():
    spec = "none boolean count integer real timestamp timespan string enum-value address"
    assert frozenset((spec + " subnet port vector set table").split()) == DATA_TYPES


# -- real frames from Zeek 8.2.2 ----------------------------------------------------------


@pytest.fixture(scope="module")
def recorded(shared_dir):
    path = shared_dir / "zeek-fixtures" / "websocket-frames.jsonl"
    if not path.exists():
        pytest.skip(f"no recorded frames at {path}")
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return {(r["direction"], r["what"]): r["frame"] for r in records}


def test_recorded_ack(recorded):
    frame = decode_frame(json.dumps(recorded[("zeek->client", "ack")]))
    assert frame == Ack("zeromq__vm_10579_N6ZcT4t4zlL7JlrAd-websocket-0", "8.2.2")


def test_recorded_all_types_event_has_the_values_fixtures_zeek_sent(recorded):
    # As bytes, the way a WebSocket library may hand a frame over.
    text = json.dumps(recorded[("zeek->client", "event all_types")], ensure_ascii=False)
    frame = decode_frame(text.encode("utf-8"))
    assert isinstance(frame, DataMessage)
    assert frame.topic == "/seqwatch/fixtures/out"
    assert frame.event.name == "Fixture::all_types"
    want = (
        True,
        Count(42),
        -7,
        3.25,
        datetime(2024, 12, 4, 8, 13, 20, 500000, tzinfo=UTC),  # double_to_time(1733300000.5)
        timedelta(milliseconds=1500),
        "héllo\ttab",
        ipaddress.ip_address("192.168.1.10"),
        ipaddress.ip_address("2001:db8::1"),
        ipaddress.ip_network("10.0.0.0/8"),
        Port(443, "tcp"),
        Port(53, "udp"),
        Port(8, "icmp"),
        Enum("tcp"),
        frozenset({ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2")}),
        {"a": Count(1), "b": Count(2)},
        (ipaddress.ip_address("192.168.1.10"), ipaddress.ip_address("2001:db8::1")),
        ((1.0, 2.5, 0.0), (3.0, 4.0, 1e6)),
        (ipaddress.ip_address("10.1.2.3"), "x", 0.5),  # Sample($host, $note, $score)
        (ipaddress.ip_address("10.1.2.4"), "y", None),  # $score unset
    )
    assert same(frame.event.args, want)
    assert frame.event.args[4].timestamp() == 1733300000.5
    sample = record_fields(frame.event.args[19], ("host", "note", "score"))
    assert sample["score"] is None
    ((key, when),) = frame.event.metadata
    assert key == 1 and frame.event.network_timestamp == when
    assert when == datetime(2026, 12, 4, 19, 58, 16, 966000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("reply", "context"),
    [
        ("reply to wrong arguments", "failed to create Zeek event"),
        ("reply to invalid JSON", "failed to decode JSON object"),
        ("reply to fractional count", "failed to decode JSON object"),
        ("reply to bad subscriptions", "subscriptions not an array"),
    ],
)
def test_recorded_error_frames(recorded, reply, context):
    frame = decode_frame(json.dumps(recorded[("zeek->client", reply)]))
    assert frame == ErrorFrame("deserialization_failed", context)


def test_our_encoding_of_the_accepted_client_event_is_the_recorded_frame(recorded):
    accepted = recorded[("client->zeek", "event from_client (accepted)")]
    event = Event(
        "Fixture::from_client",
        (
            ipaddress.ip_address("10.1.2.3"),
            datetime.fromtimestamp(1733300000.0, UTC),  # Zeek printed start=1733300000.0
            timedelta(seconds=10),
            7.5,
            ("out_conns", "out_ports"),
            (120.0, 33.0),
        ),
    )
    ours = json.loads(encode_event("/seqwatch/fixtures/in", event))
    assert json.dumps(ours, sort_keys=True) == json.dumps(accepted, sort_keys=True)
    # ... and decoding the recorded frame gives that event back.
    assert decode_event(accepted) == event


def test_recorded_rejected_client_frames(recorded):
    wrong_args = recorded[("client->zeek", "event with wrong arguments")]
    assert decode_event(wrong_args) == Event("Fixture::from_client", (Count(1),))
    assert json.loads(encode_event(wrong_args["topic"], decode_event(wrong_args))) == wrong_args
    # Zeek refused the fractional count; the codec says exactly where it is.
    with pytest.raises(WireError) as info:
        decode_event(recorded[("client->zeek", "count given a fraction")])
    assert (
        str(info.value) == "data[2].data[1].data[3]: count must be a non-negative integer, got 1.5"
    )
    with pytest.raises(WireError, match="frame: not JSON"):
        decode_frame(recorded[("client->zeek", "invalid JSON text")])
    with pytest.raises(WireError, match="subscriptions not an array"):
        decode_subscriptions(json.dumps(recorded[("client->zeek", "subscriptions not an array")]))
    subscriptions = recorded[("client->zeek", "subscriptions")]
    assert json.loads(subscription_frame(subscriptions)) == subscriptions
