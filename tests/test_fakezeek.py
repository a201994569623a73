"""The fake Zeek against every frame recorded from a real Zeek 8.2.2.

``../shared/zeek-fixtures/websocket-frames.jsonl`` holds what a real Zeek answered to a
client (record.py there). Each test here sends the fake the same client frames, in the
same order and session layout, and expects the same replies with the same shapes. A
final check makes sure every recorded frame was used by one of these tests, so a new
recording cannot silently go unchecked.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

import pytest
from fakezeek import (
    CREATE_FAILED,
    DECODE_FAILED,
    INVALID_URI,
    JSON_PATH,
    FakeZeek,
    OptionalField,
    Record,
    SetOf,
    TableOf,
    VectorOf,
    matches,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from seqwatch.sidecar.codec import Count, Event, decode_frame

# The events fixtures.zeek declares, as Zeek's script layer knows them.
FIXTURE_EVENTS = {
    "Fixture::from_client": (
        "address",
        "timestamp",
        "timespan",
        "real",
        VectorOf("string"),
        VectorOf("real"),
    ),
    "Fixture::done": (),
}
ALL_TYPES_TOPIC = "/seqwatch/fixtures/out"

# Every `what` of the recording, by the test that replays it.
SESSION_1 = (
    "subscriptions",
    "ack",
    "event all_types",
    "event from_client (accepted)",
    "event with wrong arguments",
    "reply to wrong arguments",
    "invalid JSON text",
    "reply to invalid JSON",
    "count given a fraction",
    "reply to fractional count",
    "session stayed open 7 s while idle (pings answered by the library)",
)
SESSION_2 = ("subscriptions not an array", "reply to bad subscriptions")
SESSION_3 = ("wrong path outcome",)


@pytest.fixture(scope="module")
def recording(shared_dir: Path) -> list[dict]:
    path = shared_dir / "zeek-fixtures" / "websocket-frames.jsonl"
    if not path.is_file():
        pytest.skip(f"no recorded frames at {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def frames(recording: list[dict], whats: tuple[str, ...]) -> dict[str, object]:
    by_what = {r["what"]: r["frame"] for r in recording}
    missing = [w for w in whats if w not in by_what]
    assert not missing, f"recording lacks {missing}"
    return {w: by_what[w] for w in whats}


def run(coro_fn: Callable, timeout: float = 30.0):
    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro_fn()

    return asyncio.run(bounded())


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def no_reply(ws: ClientConnection, wait: float = 0.5) -> bool:
    try:
        await asyncio.wait_for(ws.recv(), wait)
    except TimeoutError:
        return True
    return False


def same_shape(a: object, b: object) -> bool:
    """Same JSON structure: keys and value types everywhere (values may differ)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_shape(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_shape(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b)


def test_every_recorded_frame_is_replayed(recording):
    covered = set(SESSION_1) | set(SESSION_2) | set(SESSION_3)
    assert [r["what"] for r in recording if r["what"] not in covered] == []


def test_session_replay_matches_zeek(recording):
    """Handshake, Zeek's event, the client's accepted event and its three refused ones."""
    rec = frames(recording, SESSION_1)

    async def main():
        async with (
            FakeZeek(events=FIXTURE_EVENTS, ping_interval=0.2) as zeek,
            connect(zeek.url, compression=None) as ws,
        ):
            await ws.send(json.dumps(rec["subscriptions"]))
            ack = await recv_json(ws)
            # Same keys and types; the endpoint id is the node's own in any Zeek.
            assert same_shape(ack, rec["ack"])
            assert ack["type"] == "ack"
            assert ack["version"] == rec["ack"]["version"] == "8.2.2"

            # Zeek -> client: republishing the decoded event gives the recorded frame.
            recorded = rec["event all_types"]
            message = decode_frame(json.dumps(recorded))
            assert await zeek.publish(message.topic, message.event) == 1
            assert await recv_json(ws) == recorded

            # Client -> Zeek: accepted, no reply, and Zeek holds the values printed in
            # zeek-stdout.txt (start=1733300000.0 width=10.0 secs score=7.5 ...).
            await ws.send(json.dumps(rec["event from_client (accepted)"]))
            await zeek.wait_received(1)
            assert await no_reply(ws)
            event = zeek.received[0].event
            assert zeek.received[0].topic == "/seqwatch/fixtures/in"
            assert event.name == "Fixture::from_client"
            host, start, width, score, names, values = event.args
            assert host == ip_address("10.1.2.3")
            assert start.timestamp() == 1733300000.0
            assert width == timedelta(seconds=10)
            assert (score, names, values) == (7.5, ("out_conns", "out_ports"), (120.0, 33.0))

            for sent, reply in (
                ("event with wrong arguments", "reply to wrong arguments"),
                ("invalid JSON text", "reply to invalid JSON"),
                ("count given a fraction", "reply to fractional count"),
            ):
                frame = rec[sent]
                await ws.send(frame if isinstance(frame, str) else json.dumps(frame))
                assert await recv_json(ws) == rec[reply], sent
            assert len(zeek.received) == 1
            assert [e for _, e in zeek.rejected] == [
                rec["reply to wrong arguments"],
                rec["reply to invalid JSON"],
                rec["reply to fractional count"],
            ]

            # Idle with pings every 0.2 s: the library answers, the session stays open.
            assert rec["session stayed open 7 s while idle (pings answered by the library)"] is None
            await asyncio.sleep(1.0)
            assert zeek.connected and zeek.connected[0].close_code is None
            await ws.ping()  # and the connection still works both ways

    run(main)


def test_bad_subscriptions_replay(recording):
    rec = frames(recording, SESSION_2)

    async def main():
        async with FakeZeek() as zeek, connect(zeek.url) as ws:
            await ws.send(json.dumps(rec["subscriptions not an array"]))
            assert await recv_json(ws) == rec["reply to bad subscriptions"]
            # No ack, and later frames are ignored (Zeek queues them until an ack that
            # never comes); the connection itself stays open.
            await ws.send(json.dumps(["/seqwatch/features"]))
            assert await no_reply(ws)
            assert zeek.connected == []
            assert zeek.clients[0].close_code is None

    run(main)


def test_subscription_entries_must_be_strings():
    async def main():
        async with FakeZeek() as zeek, connect(zeek.url) as ws:
            await ws.send(json.dumps(["/a", 7]))
            reply = await recv_json(ws)
            assert reply == {
                "type": "error",
                "code": "deserialization_failed",
                "context": "individual subscription not a string",
            }

    run(main)


def test_wrong_path_replay(recording):
    outcome = frames(recording, SESSION_3)["wrong path outcome"]
    # "ConnectionClosedError: received 1008 (policy violation) Invalid URI - use ..."
    assert "received 1008" in outcome and INVALID_URI in outcome

    async def main():
        async with FakeZeek() as zeek:
            base = zeek.url.removesuffix(JSON_PATH)
            async with connect(base + "/v1/messages/binary") as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    while True:  # whatever came before the close, the close must come
                        await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, INVALID_URI)
            assert zeek.connected == []

    run(main)


def test_routing_by_topic_prefix_and_only_after_ack():
    async def main():
        async with (
            FakeZeek() as zeek,
            connect(zeek.url) as features,
            connect(zeek.url) as everything,
            connect(zeek.url) as silent,
        ):
            await features.send(json.dumps(["/seqwatch/features"]))
            await everything.send(json.dumps(["/seqwatch/"]))
            await recv_json(features)
            await recv_json(everything)
            # `silent` never subscribed, so it has no ack and gets nothing.
            await zeek.wait_connected(2)
            event = Event("Demo::ping", (Count(1),))
            assert await zeek.publish("/seqwatch/features/node-1", event) == 2
            assert await zeek.publish("/seqwatch/verdicts", event) == 1
            assert await zeek.publish("/other", event) == 0
            got = await recv_json(features)
            assert got["topic"] == "/seqwatch/features/node-1"
            assert (await recv_json(everything))["topic"] == "/seqwatch/features/node-1"
            assert (await recv_json(everything))["topic"] == "/seqwatch/verdicts"
            assert await no_reply(features, 0.2)
            assert await no_reply(silent, 0.2)

    run(main)


def test_unknown_event_and_missing_topic_are_refused():
    async def main():
        async with FakeZeek() as zeek, connect(zeek.url) as ws:
            await ws.send("[]")
            await recv_json(ws)
            unknown = {
                "type": "data-message",
                "topic": "/x",
                "@data-type": "vector",
                "data": [
                    {"@data-type": "count", "data": 1},
                    {"@data-type": "count", "data": 1},
                    {
                        "@data-type": "vector",
                        "data": [
                            {"@data-type": "string", "data": "Nobody::declared"},
                            {"@data-type": "vector", "data": []},
                        ],
                    },
                ],
            }
            await ws.send(json.dumps(unknown))
            assert (await recv_json(ws))["context"] == CREATE_FAILED
            no_topic = {k: v for k, v in unknown.items() if k != "topic"}
            await ws.send(json.dumps(no_topic))
            assert (await recv_json(ws))["context"] == DECODE_FAILED
            assert zeek.received == []

    run(main)


def test_type_specs():
    ts = datetime(2024, 1, 1, tzinfo=UTC)
    assert matches((Count(1), "x"), Record("count", "string"))
    assert not matches((1, "x"), Record("count", "string"))  # integer is not count
    assert matches(("x", None), Record("string", OptionalField("real")))
    assert not matches(("x", None), Record("string", "real"))
    assert matches((), VectorOf("address"))
    assert matches(frozenset({ts}), SetOf("timestamp"))
    assert matches({"a": Count(1)}, TableOf("string", "count"))
    assert not matches({"a": 1.0}, TableOf("string", "count"))
    assert not matches((1.0, 2), VectorOf("real"))


def _raw_upgrade(port: int) -> socket.socket:
    """A TCP client that completes the WebSocket handshake and then never reads."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {JSON_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 101")
    # The subscription frame, masked as a client must: FIN+text, mask bit, length 2.
    mask = os.urandom(4)
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"[]"))
    sock.sendall(bytes([0x81, 0x80 | 2]) + mask + payload)
    return sock


def test_client_that_ignores_pings_is_dropped():
    async def main():
        async with FakeZeek(ping_interval=0.2, ping_timeout=0.3) as zeek:
            sock = await asyncio.to_thread(_raw_upgrade, zeek.port)
            try:
                await zeek.wait_for(lambda: bool(zeek.clients) and zeek.clients[0].acked)
                await zeek.wait_for(lambda: zeek.clients[0].close_code is not None, timeout=5)
                assert zeek.clients[0].dropped == "1011 keepalive ping timeout"
            finally:
                sock.close()

    run(main)


def test_restart_keeps_the_port_and_drops_clients():
    async def main():
        async with FakeZeek() as zeek:
            port = zeek.port
            async with connect(zeek.url) as ws:
                await ws.send("[]")
                await recv_json(ws)
                await zeek.restart()
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 5)
                assert closed.value.rcvd.code == 1001
            assert zeek.port == port and zeek.restarts == 1
            async with connect(zeek.url) as again:
                await again.send("[]")
                assert (await recv_json(again))["type"] == "ack"
            await zeek.restart(graceful=False)
            async with connect(zeek.url) as third:
                await third.send("[]")
                assert (await recv_json(third))["type"] == "ack"

    run(main)
