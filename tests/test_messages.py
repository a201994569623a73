"""seqwatch's own events (messages.py) and the examples in docs/wire-protocol.md."""

from __future__ import annotations

import ipaddress
import json
import math
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from seqwatch.sidecar.codec import (
    Ack,
    Count,
    DataMessage,
    ErrorFrame,
    Event,
    decode_event,
    decode_frame,
    decode_subscriptions,
    decode_value,
    encode_event,
    subscription_frame,
)
from seqwatch.sidecar.messages import (
    FEATURE_ARGS,
    FEATURES_EVENT,
    FEATURES_TOPIC,
    NETCONTROL_TOPIC,
    VERDICT_EVENT,
    VERDICT_FIELDS,
    VERDICTS_TOPIC,
    FeatureMessage,
    MessageError,
    Verdict,
)
from seqwatch.sidecar.schema import N_FEATURES, SCHEMA_ID

START = 1733300040.0


def features(**changes) -> FeatureMessage:
    fields = {
        "node": "worker-1",
        "start": START,
        "width": 60.0,
        "schema": SCHEMA_ID,
        "chunk": 0,
        "chunks": 1,
        "late": 2,
        "overflow": 0,
        "hosts": ("192.168.1.10", "2001:db8::5"),
        "values": np.arange(2 * N_FEATURES, dtype=float).reshape(2, N_FEATURES),
    }
    return FeatureMessage(**{**fields, **changes})


def verdict(**changes) -> Verdict:
    fields = {
        "host": "192.168.1.10",
        "start": START,
        "width": 60.0,
        "error": 14.2,
        "threshold": 4.87,
        "model_id": "gru-2024-12-01",
        "top_features": ("out_ports", "out_failed"),
        "top_residuals": (8.1, -6.04),
    }
    return Verdict(**{**fields, **changes})


def over_the_wire(topic: str, event: Event) -> Event:
    frame = decode_frame(encode_event(topic, event))
    assert isinstance(frame, DataMessage) and frame.topic == topic
    return frame.event


def test_topics():
    assert (FEATURES_TOPIC, VERDICTS_TOPIC, NETCONTROL_TOPIC) == (
        "/seqwatch/features",
        "/seqwatch/verdicts",
        "/seqwatch/netcontrol",
    )


# -- features -------------------------------------------------------------------------------


def test_feature_message_round_trips_through_the_wire():
    message = features()
    event = over_the_wire(FEATURES_TOPIC, message.to_event())
    assert event.name == FEATURES_EVENT
    assert [type(a).__name__ for a in event.args[:8]] == [
        "str", "datetime", "timedelta", "str", "Count", "Count", "Count", "Count",
    ]  # fmt: skip
    again = FeatureMessage.from_event(event)
    assert again == message
    assert again.bin == round(START / 60) and again.interval_key == ("worker-1", START, 60.0)
    assert not again.values.flags.writeable


def test_feature_message_normalizes_hosts_and_values():
    message = features(hosts=("2001:0db8:0::5", "10.0.0.1"), values=[[1] * 16, [2] * 16])
    assert message.hosts == ("2001:db8::5", "10.0.0.1")
    assert message.values.dtype == np.float64 and message.values.shape == (2, 16)
    empty = features(hosts=(), values=[])
    assert empty.values.shape == (0, 16)
    assert FeatureMessage.from_event(empty.to_event()) == empty


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"schema": "seqwatch.features.v2"}, "schema: 'seqwatch.features.v2' is not"),
        ({"width": 0.0}, "width: must be a positive interval"),
        ({"start": math.nan}, "start: must be a finite time"),
        ({"chunk": 1, "chunks": 1}, "chunk: chunk 1 of 1 is out of range"),
        ({"chunks": 0}, "chunk: chunk 0 of 0 is out of range"),
        ({"late": -1}, "late: must be a non-negative integer"),
        ({"overflow": 1.5}, "overflow: must be a non-negative integer"),
        ({"hosts": ("192.168.1.10", "not-an-ip")}, "hosts[1]: not an address"),
        ({"values": np.ones((2, 15))}, "values: must be [hosts, 16], got shape (2, 15)"),
        ({"values": np.ones((3, 16))}, "values: 3 vectors for 2 hosts"),
        (
            {"values": np.array([[0.0] * 16, [0.0] * 5 + [-1.0] + [0.0] * 10])},
            "values[1][5]: must be finite and >= 0, got -1.0",
        ),
        (
            {"values": np.array([[0.0] * 15 + [math.inf], [0.0] * 16])},
            "values[0][15]: must be finite and >= 0, got inf",
        ),
    ],
)
def test_feature_message_validation(changes, message):
    with pytest.raises(MessageError) as info:
        features(**changes)
    assert f"{FEATURES_EVENT} {message}" in str(info.value)


def args_with(**changes) -> tuple:
    args = dict(zip(FEATURE_ARGS, features().to_event().args, strict=True))
    args.update(changes)
    return tuple(args[name] for name in FEATURE_ARGS)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (Event("SeqWatch::other", ()), "expected event SeqWatch::interval_features"),
        (Event(FEATURES_EVENT, ("x",)), "expected 10 arguments (node, start, width, schema"),
        (Event(FEATURES_EVENT, args_with(chunk=0)), "chunk: must be count, got integer"),
        (Event(FEATURES_EVENT, args_with(start=START)), "start: must be timestamp, got real"),
        (Event(FEATURES_EVENT, args_with(width=60.0)), "width: must be timespan, got real"),
        (Event(FEATURES_EVENT, args_with(node=Count(1))), "node: must be string, got count"),
        (
            Event(FEATURES_EVENT, args_with(hosts=("10.0.0.1", "10.0.0.2"))),
            "hosts[0]: must be address, got string",
        ),
        (
            Event(FEATURES_EVENT, args_with(values=((1.0,) * 16, (1.0,) * 15))),
            "values[1]: must be a vector of 16 doubles",
        ),
        (
            Event(FEATURES_EVENT, args_with(values=((1.0,) * 16, (1.0,) * 15 + (Count(1),)))),
            "values[1][15]: must be real, got count",
        ),
        (
            Event(FEATURES_EVENT, args_with(values=((1.0,) * 16, (math.nan,) * 16))),
            "values[1][0]: must be finite and >= 0, got nan",
        ),
        (Event(FEATURES_EVENT, args_with(schema="v0")), "schema: 'v0' is not"),
    ],
)
def test_feature_event_validation(event, message):
    with pytest.raises(MessageError) as info:
        FeatureMessage.from_event(event)
    assert message in str(info.value)


# -- verdicts -------------------------------------------------------------------------------


def test_verdict_round_trips_as_a_positional_record():
    v = verdict()
    event = over_the_wire(VERDICTS_TOPIC, v.to_event())
    assert event.name == VERDICT_EVENT and len(event.args) == 1
    record = event.args[0]
    assert len(record) == len(VERDICT_FIELDS) == 8
    assert record[0] == ipaddress.ip_address("192.168.1.10")
    assert record[1] == datetime(2024, 12, 4, 8, 14, tzinfo=UTC)
    assert record[2] == timedelta(seconds=60)
    assert Verdict.from_event(event) == v


def test_verdict_key_and_explanation():
    v = verdict(host="2001:0db8::0001")
    assert v.host == "2001:db8::1"
    assert v.key == ("2001:db8::1", START, "gru-2024-12-01")
    assert v.explanation() == "out_ports +8.1σ, out_failed -6.0σ"
    assert verdict(top_features=(), top_residuals=()).explanation() == ""
    assert isinstance(verdict(error=3).error, float)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"host": "nope"}, "host: not an address"),
        ({"error": math.nan}, "error: must be finite and >= 0"),
        ({"threshold": -1.0}, "threshold: must be finite and >= 0"),
        ({"error": "big"}, "error: must be a number"),
        ({"width": 0}, "width: must be a positive interval"),
        ({"model_id": ""}, "model_id: must be a non-empty string"),
        ({"top_residuals": (1.0,)}, "top_features: 2 features for 1 residuals"),
        ({"top_residuals": (1.0, math.inf)}, "top_residuals[1]: must be finite"),
        ({"top_features": ("out_ports", "")}, "top_features[1]: must be a feature name"),
    ],
)
def test_verdict_validation(changes, message):
    with pytest.raises(MessageError) as info:
        verdict(**changes)
    assert f"{VERDICT_EVENT} {message}" in str(info.value)


def record_with(**changes) -> tuple:
    fields = dict(zip(VERDICT_FIELDS, verdict().to_event().args[0], strict=True))
    fields.update(changes)
    return tuple(fields[name] for name in VERDICT_FIELDS)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (Event("x", ()), "expected event SeqWatch::verdict"),
        (Event(VERDICT_EVENT, ()), "expected 1 argument (v: SeqWatch::Verdict), got 0"),
        (Event(VERDICT_EVENT, (record_with()[:7],)), "v: record has 8 fields"),
        (Event(VERDICT_EVENT, ("host",)), "v: a record travels as a vector, got string"),
        (Event(VERDICT_EVENT, (record_with(error=Count(3)),)), "v$error: must be real, got count"),
        (
            Event(VERDICT_EVENT, (record_with(host="10.0.0.1"),)),
            "v$host: must be address, got string",
        ),
        (
            Event(VERDICT_EVENT, (record_with(top_residuals=(1.0, Count(2))),)),
            "v$top_residuals[1]: must be real, got count",
        ),
    ],
)
def test_verdict_event_validation(event, message):
    with pytest.raises(MessageError) as info:
        Verdict.from_event(event)
    assert message in str(info.value)


# -- docs/wire-protocol.md: every example decodes ---------------------------------------------

_EXAMPLE = re.compile(r"<!-- wire-example: ([a-z-]+) -->\n```json\n(.*?)\n```", re.DOTALL)


@pytest.fixture(scope="module")
def doc_examples(repo_root) -> list[tuple[str, str]]:
    text = (repo_root / "docs" / "wire-protocol.md").read_text(encoding="utf-8")
    examples = _EXAMPLE.findall(text)
    # Every marker must be followed by a JSON block, or an example could silently drop out.
    assert len(examples) == text.count("<!-- wire-example:")
    return examples


def test_doc_has_each_kind_of_example(doc_examples):
    kinds = [kind for kind, _ in doc_examples]
    assert set(kinds) == {"subscriptions", "server", "client-event", "values"}
    assert kinds.count("server") >= 5


def test_doc_examples_decode(doc_examples):
    seen = set()
    for kind, text in doc_examples:
        if kind == "subscriptions":
            assert json.loads(subscription_frame(decode_subscriptions(text))) == json.loads(text)
        elif kind == "values":
            for i, obj in enumerate(json.loads(text)):
                decode_value(obj, f"example[{i}]")
        elif kind == "server":
            frame = decode_frame(text)
            seen.add(type(frame).__name__)
            if isinstance(frame, DataMessage):
                assert frame.topic == FEATURES_TOPIC
                message = FeatureMessage.from_event(frame.event)
                assert len(message.hosts) == 2 and message.late == 2
                # What Zeek sends is what the Python side would send for the same chunk.
                assert json.loads(encode_event(FEATURES_TOPIC, message.to_event())) == json.loads(
                    text
                )
        elif kind == "client-event":
            obj = json.loads(text)
            event = decode_event(obj)
            assert json.loads(encode_event(obj["topic"], event)) == obj
            v = Verdict.from_event(event)
            assert v.explanation() == "out_ports +8.1σ, out_failed +6.0σ"
            seen.add("Verdict")
    assert seen == {"Ack", "ErrorFrame", "DataMessage", "Verdict"}


def test_doc_error_examples_are_the_recorded_ones(doc_examples, shared_dir):
    path = shared_dir / "zeek-fixtures" / "websocket-frames.jsonl"
    with open(path, encoding="utf-8") as f:
        recorded = [json.loads(line)["frame"] for line in f]
    replies = {
        json.dumps(frame, sort_keys=True)
        for frame in recorded
        if isinstance(frame, dict) and frame.get("type") in ("error", "ack")
    }
    documented = [decode_frame(text) for kind, text in doc_examples if kind == "server"]
    for frame in documented:
        if isinstance(frame, Ack | ErrorFrame):
            obj = {"type": "ack", **vars(frame)} if isinstance(frame, Ack) else None
            obj = obj or {"type": "error", **vars(frame)}
            assert json.dumps(obj, sort_keys=True) in replies
