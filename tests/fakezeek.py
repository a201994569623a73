"""An in-process stand-in for Zeek's WebSocket API (JSON v1), for tests.

It implements the server side the way a real Zeek 8.2.2 behaves, as recorded in
``../shared/zeek-fixtures/websocket-frames.jsonl`` (tests/test_fakezeek.py replays every
recorded frame against it) and as Zeek's ``src/cluster/websocket/WebSocket.cc`` reads:

- only ``/v1/messages/json`` is served; any other path is accepted as a WebSocket and then
  closed with 1008 "Invalid URI - use /v1/messages/json";
- the client's first frame must be a JSON array of strings. Otherwise Zeek answers with
  an error frame (``subscriptions not an array`` / ``individual subscription not a
  string``), sends no ack, and keeps the connection open while ignoring later frames;
- the ack is ``{"type": "ack", "endpoint": ..., "version": "8.2.2"}``;
- events published to a topic go to every acknowledged client with a subscription that
  is a *prefix* of the topic;
- a client's data message must decode (else ``failed to decode JSON object``) and name a
  registered event whose arguments match the declared types (else ``failed to create
  Zeek event``), exactly as Zeek needs the script-level declaration to build the event;
  accepted events are recorded in :attr:`FakeZeek.received` for assertions;
- without a cluster backend (``backend=False``) a Zeek 8.x accepts the subscriptions and
  never acks;
- the server pings every ``ping_interval`` seconds (Zeek: 5 s) and drops a client that
  does not answer within ``ping_timeout``;
- :meth:`FakeZeek.restart` drops every connection, stops listening and listens again on
  the same port, as a restarted Zeek does.

It listens on 127.0.0.1 only. At the end, helpers to run a sidecar against it
(:func:`sidecar_config`, :func:`running_sidecar`, :class:`SlowPipeline`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from seqwatch.sidecar.codec import DataMessage, Event, WireError, data_type, decode_event
from seqwatch.sidecar.codec import encode_event as codec_encode_event
from seqwatch.sidecar.messages import FEATURES_EVENT, VERDICT_EVENT

JSON_PATH = "/v1/messages/json"
ZEEK_VERSION = "8.2.2"
INVALID_URI = "Invalid URI - use /v1/messages/json"
DESERIALIZATION_FAILED = "deserialization_failed"
NOT_AN_ARRAY = "subscriptions not an array"
NOT_A_STRING = "individual subscription not a string"
DECODE_FAILED = "failed to decode JSON object"
CREATE_FAILED = "failed to create Zeek event"


# -- event signatures: what Zeek knows from its scripts' declarations ----------------------
@dataclass(frozen=True)
class VectorOf:
    """``vector of T``."""

    item: TypeSpec


@dataclass(frozen=True)
class SetOf:
    """``set[T]``."""

    item: TypeSpec


@dataclass(frozen=True)
class TableOf:
    """``table[K] of V``."""

    key: TypeSpec
    value: TypeSpec


@dataclass(frozen=True)
class OptionalField:
    """A record field declared ``&optional``: it may travel as ``none``."""

    inner: TypeSpec


@dataclass(frozen=True)
class Record:
    """A record: a positional vector with one entry per field, in declaration order."""

    fields: tuple[TypeSpec, ...]

    def __init__(self, *fields: TypeSpec) -> None:
        object.__setattr__(self, "fields", tuple(fields))


TypeSpec = str | VectorOf | SetOf | TableOf | OptionalField | Record
"""A Zeek type as the JSON format shows it: a ``@data-type`` name or a composite above."""


def matches(value: Any, spec: TypeSpec) -> bool:
    """Whether a decoded value can become a Zeek value of type ``spec``."""
    if isinstance(spec, OptionalField):
        return value is None or matches(value, spec.inner)
    try:
        kind = data_type(value)
    except WireError:
        return False
    if isinstance(spec, str):
        return kind == spec
    if isinstance(spec, VectorOf):
        return kind == "vector" and all(matches(item, spec.item) for item in value)
    if isinstance(spec, SetOf):
        return kind == "set" and all(matches(item, spec.item) for item in value)
    if isinstance(spec, TableOf):
        return kind == "table" and all(
            matches(k, spec.key) and matches(v, spec.value) for k, v in value.items()
        )
    if isinstance(spec, Record):
        return (
            kind == "vector"
            and len(value) == len(spec.fields)
            and all(matches(v, f) for v, f in zip(value, spec.fields, strict=True))
        )
    raise TypeError(f"not a type spec: {spec!r}")


VERDICT_RECORD = Record(
    "address", "timestamp", "timespan", "real", "real", "string", VectorOf("string"),
    VectorOf("real"),
)  # fmt: skip
"""``SeqWatch::Verdict`` (zeek_scripts/main.zeek)."""

NETCONTROL_RULE = Record(
    "string", "enum-value", "enum-value", "subnet", "timespan", "integer", "string"
)
"""``SeqWatch::NetControlRule`` (zeek_scripts/netcontrol.zeek)."""

SEQWATCH_EVENTS: dict[str, tuple[TypeSpec, ...]] = {
    VERDICT_EVENT: (VERDICT_RECORD,),
    FEATURES_EVENT: (
        "string",
        "timestamp",
        "timespan",
        "string",
        "count",
        "count",
        "count",
        "count",
        VectorOf("address"),
        VectorOf(VectorOf("real")),
    ),
    **{
        f"SeqWatch::netcontrol_rule_{what}": ("count", NETCONTROL_RULE, "string")
        for what in ("added", "exists", "removed", "error")
    },
}
"""The events a Zeek with the seqwatch scripts loaded can build from a client's frame."""


# -- the server ----------------------------------------------------------------------------
@dataclass
class Client:
    """One WebSocket client as the fake sees it."""

    id: int
    connection: ServerConnection
    path: str
    subscriptions: tuple[str, ...] = ()
    acked: bool = False
    frames_in: int = 0
    errors_sent: list[dict[str, str]] = field(default_factory=list)
    close_code: int | None = None
    """Close code the client sent (1006 when it sent none); None while open."""
    close_reason: str = ""
    dropped: str | None = None
    """Why the server closed the connection, e.g. ``1011 keepalive ping timeout``."""

    def wants(self, topic: str) -> bool:
        return self.acked and any(topic.startswith(prefix) for prefix in self.subscriptions)


class FakeZeek:
    """A Zeek WebSocket endpoint on 127.0.0.1 (random port unless ``port`` is given).

    Use as ``async with FakeZeek() as zeek: ...``; :attr:`url` is what a client connects
    to. ``events`` maps event names to argument type specs (default: seqwatch's own);
    :meth:`register_event` adds more. ``ssl_context`` serves ``wss://``.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        ping_interval: float | None = 5.0,
        ping_timeout: float | None = None,
        endpoint: str = "fakezeek-websocket-0",
        version: str = ZEEK_VERSION,
        events: Mapping[str, Sequence[TypeSpec]] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_size: int | None = 64 * 1024 * 1024,
        close_timeout: float = 2.0,
        backend: bool = True,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.ping_interval = ping_interval
        self.ping_timeout = ping_interval if ping_timeout is None else ping_timeout
        self.endpoint = endpoint
        self.version = version
        self.events: dict[str, tuple[TypeSpec, ...]] = {
            name: tuple(args) for name, args in (events or SEQWATCH_EVENTS).items()
        }
        self.ssl_context = ssl_context
        self.max_size = max_size
        self.close_timeout = close_timeout
        self.backend = backend
        """False: like a Zeek 8.x without a cluster backend, upgrade but never ack."""
        self.clients: list[Client] = []
        """Every client that ever connected, in order (closed ones keep their close code)."""
        self.received: list[DataMessage] = []
        """Events from clients that Zeek accepted (and would have published), in order."""
        self.rejected: list[tuple[str, dict[str, str]]] = []
        """(frame text, error frame sent) for every client frame Zeek refused."""
        self.restarts = 0
        self._server: Server | None = None
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> FakeZeek:
        """Listen (on the configured port, or a free one picked now and kept for restarts)."""
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            max_size=self.max_size,
            # How long a closing connection may linger before TCP is cut (a client that
            # stopped reading never completes the closing handshake).
            close_timeout=self.close_timeout,
            ssl=self.ssl_context,
            # Zeek's JSON API negotiates no extension; a client must cope without one.
            compression=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self, *, graceful: bool = True) -> None:
        """Stop listening and drop every connection.

        ``graceful`` closes each connection with 1001 "Terminating" as Zeek does when it
        shuts down; otherwise the TCP connections are aborted (a crash, a dead host).
        """
        server, self._server = self._server, None
        if server is None:
            return
        if graceful:
            server.close(close_connections=True, code=1001, reason="Terminating")
        else:
            for connection in list(server.connections):
                connection.transport.abort()
            server.close(close_connections=False)
        await server.wait_closed()
        await self._notify()

    async def restart(self, *, graceful: bool = True, down_for: float = 0.0) -> None:
        """Drop all connections, stop listening, wait ``down_for`` s, listen on the same port."""
        await self.stop(graceful=graceful)
        if down_for > 0:
            await asyncio.sleep(down_for)
        await self.start()
        self.restarts += 1

    async def __aenter__(self) -> FakeZeek:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl_context else "ws"
        return f"{scheme}://{self.host}:{self.port}{JSON_PATH}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    def register_event(self, name: str, *args: TypeSpec) -> None:
        """Declare an event, as a Zeek script's ``global name: event(...)`` does."""
        self.events[name] = tuple(args)

    # -- what tests do -----------------------------------------------------------------------
    @property
    def connected(self) -> list[Client]:
        """Clients that are acknowledged and still open."""
        return [c for c in self.clients if c.acked and c.close_code is None]

    async def publish(self, topic: str, event: Event) -> int:
        """Publish ``event`` as Zeek's ``Cluster::publish`` would; return clients reached."""
        return await self.publish_text(topic, codec_encode_event(topic, event))

    async def publish_text(self, topic: str, text: str | bytes) -> int:
        """Send a raw frame to every client subscribed to a prefix of ``topic``.

        For malformed-frame tests: the text need not be valid (a real Zeek never sends
        such frames, but whatever sits between Zeek and the sidecar might).
        """
        reached = 0
        for client in self.connected:
            if client.wants(topic):
                try:
                    await client.connection.send(text)
                    reached += 1
                except ConnectionClosed:
                    pass
        return reached

    async def send_error(self, code: str, context: str) -> int:
        """Send an error frame to every acknowledged client (Zeek's errors are per client)."""
        frame = json.dumps({"type": "error", "code": code, "context": context})
        reached = 0
        for client in self.connected:
            try:
                await client.connection.send(frame)
                reached += 1
            except ConnectionClosed:
                pass
        return reached

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds (re-checked whenever the fake's state changes)."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(predicate)

    async def wait_connected(self, count: int = 1, timeout: float = 10.0) -> list[Client]:
        """Wait until ``count`` clients are acknowledged and open; return them."""
        await self.wait_for(lambda: len(self.connected) >= count, timeout)
        return self.connected

    async def wait_received(self, count: int, timeout: float = 10.0) -> list[DataMessage]:
        """Wait until at least ``count`` client events were accepted; return all of them."""
        await self.wait_for(lambda: len(self.received) >= count, timeout)
        return list(self.received)

    def received_events(self, name: str) -> list[Event]:
        return [m.event for m in self.received if m.event.name == name]

    # -- one connection ----------------------------------------------------------------------
    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _handle(self, connection: ServerConnection) -> None:
        client = Client(next(self._ids), connection, connection.request.path)
        self.clients.append(client)
        try:
            if client.path != JSON_PATH:
                # Zeek accepts the upgrade, then refuses the path.
                await self._send_error(client, "invalid_uri", INVALID_URI)
                await connection.close(1008, INVALID_URI)
                return
            async for frame in connection:
                client.frames_in += 1
                if client.frames_in == 1:
                    await self._subscribe(client, frame)
                elif client.acked:
                    await self._event_from(client, frame)
                # Zeek queues frames of a client that never got an ack, for ever.
        except ConnectionClosed:
            pass
        finally:
            client.close_code = connection.close_code if connection.close_code else 1006
            client.close_reason = connection.close_reason or ""
            sent = connection.protocol.close_sent
            if sent is not None and connection.protocol.close_rcvd_then_sent is not True:
                client.dropped = f"{int(sent.code)} {sent.reason}".strip()
            await self._notify()

    async def _send_error(self, client: Client, code: str, context: str) -> None:
        frame = {"type": "error", "code": code, "context": context}
        client.errors_sent.append(frame)
        await client.connection.send(json.dumps(frame))

    async def _subscribe(self, client: Client, frame: str | bytes) -> None:
        try:
            topics = json.loads(frame)
        except ValueError:
            topics = None
        if not isinstance(topics, list):
            await self._send_error(client, DESERIALIZATION_FAILED, NOT_AN_ARRAY)
            return
        if not all(isinstance(t, str) for t in topics):
            await self._send_error(client, DESERIALIZATION_FAILED, NOT_A_STRING)
            return
        client.subscriptions = tuple(topics)
        if not self.backend:
            return  # Zeek 8.x without a cluster backend: subscriptions never complete
        await client.connection.send(
            json.dumps({"type": "ack", "endpoint": self.endpoint, "version": self.version})
        )
        client.acked = True
        await self._notify()

    async def _event_from(self, client: Client, frame: str | bytes) -> None:
        message, error = self._decode(frame)
        if message is None:
            text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
            await self._send_error(client, DESERIALIZATION_FAILED, error)
            self.rejected.append((text, client.errors_sent[-1]))
        else:
            self.received.append(message)
        await self._notify()

    def _decode(self, frame: str | bytes) -> tuple[DataMessage | None, str]:
        """The accepted message, or None and the context of Zeek's error frame."""
        try:
            obj = json.loads(frame)
        except ValueError:
            return None, DECODE_FAILED
        if not (
            isinstance(obj, dict)
            and obj.get("type") == "data-message"
            and isinstance(obj.get("topic"), str)
        ):
            return None, DECODE_FAILED
        try:
            event = decode_event(obj)
        except (WireError, RecursionError):
            return None, DECODE_FAILED
        signature = self.events.get(event.name)
        if signature is None or not _args_match(event.args, signature):
            return None, CREATE_FAILED
        return DataMessage(obj["topic"], event), ""


def _args_match(args: Iterable[Any], signature: Sequence[TypeSpec]) -> bool:
    args = tuple(args)
    return len(args) == len(signature) and all(
        matches(a, s) for a, s in zip(args, signature, strict=True)
    )


# -- running a sidecar against the fake ------------------------------------------------------
def sidecar_config(url: str, **zeek: Any):
    """A sidecar Config for ``url`` with quick reconnects; ``zeek`` overrides [zeek] keys."""
    from seqwatch.sidecar.config import load_config

    overrides = {"zeek.url": url, "zeek.reconnect_min": 0.05, "zeek.reconnect_max": 0.2}
    overrides.update({f"zeek.{key}": value for key, value in zeek.items()})
    return load_config(None, env={}, overrides=overrides)


class SlowPipeline:
    """A pipeline whose scoring takes at least ``delay`` s per message (a busy scorer).

    It blocks the calling thread, as a slow ONNX run does, and while ``gate`` (a
    threading.Event) is given and not set it does not score at all. It records the
    messages it was given, in order.
    """

    def __init__(self, pipeline, delay: float = 0.0, gate=None):
        self._pipeline = pipeline
        self.delay = delay
        self.gate = gate
        self.seen: list = []

    def on_features(self, msg):
        if self.gate is not None:
            self.gate.wait()
        time.sleep(self.delay)
        self.seen.append(msg)
        return self._pipeline.on_features(msg)

    def __getattr__(self, name: str) -> Any:
        # stats, info, threshold ...: the wrapped pipeline's.
        return getattr(self._pipeline, name)


@contextlib.asynccontextmanager
async def running_sidecar(
    config, pipeline, spool_path, *, enforcer=None, options=None, metrics=None
) -> AsyncIterator:
    """Run a :class:`~seqwatch.sidecar.live.LiveClient` as a task; stop it on exit.

    Yields the client (its ``stats``, ``backlog``, ``metrics``, ``spool``). Exiting stops
    it and checks that ``run`` returned 0 within 20 s.
    """
    from seqwatch.sidecar.live import LiveClient, LiveOptions
    from seqwatch.sidecar.metrics import Metrics
    from seqwatch.sidecar.spool import Spool

    spool = Spool(spool_path, "tsv", fsync="never")
    client = LiveClient(
        config,
        pipeline,
        spool,
        metrics or Metrics(),
        enforcer,
        options=options or LiveOptions(handle_signals=False),
    )
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        client.stop.set()
        try:
            assert await asyncio.wait_for(task, 20) == 0
        finally:
            spool.close()
