"""The NetControl bridge: request events -> enforcer -> reply events, and one WebSocket trip.

The enforcer runs in enforce mode against the simulated firewall here; the real firewall
is exercised in test_mitigation_netns.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from datetime import timedelta
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from seqwatch.sidecar.codec import Count, Enum, Event, decode_frame, encode_event
from seqwatch.sidecar.messages import NETCONTROL_TOPIC
from seqwatch.sidecar.mitigation import Enforcer, MitigationConfig, SimulatedFirewall
from seqwatch.sidecar.mitigation.netcontrol import (
    ADD_RULE,
    REMOVE_RULE,
    REPLY_TOPIC,
    RULE_ADDED,
    RULE_ERROR,
    RULE_EXISTS,
    RULE_REMOVED,
    NetControlBridge,
    serve_netcontrol,
)


def rule(
    address: str = "198.51.100.7/32",
    expire: float = 600,
    rule_id: str = "2",
    ty: str = "NetControl::DROP",
    entity: str = "NetControl::ADDRESS",
) -> tuple:
    """A ``SeqWatch::NetControlRule`` as the codec decodes it (positional)."""
    return (
        rule_id,
        Enum(ty),
        Enum(entity),
        ipaddress.ip_network(address),
        timedelta(seconds=expire),
        0,
        "catch-and-release",
    )


def add(r: tuple, plugin: int = 0) -> Event:
    return Event(ADD_RULE, (Count(plugin), r))


def remove(r: tuple, reason: str = "expired") -> Event:
    return Event(REMOVE_RULE, (Count(0), r, reason))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[NetControlBridge, SimulatedFirewall]:
    clock = lambda: 1_700_000_000.0  # noqa: E731 - a frozen clock is all these tests need
    firewall = SimulatedFirewall(clock, host_addresses=["192.0.2.10/24"])
    config = MitigationConfig(
        mode="enforce", audit_log=tmp_path / "audit.jsonl", ttl=60, max_ttl=3600
    )
    enforcer = Enforcer(config, firewall, clock=clock)
    enforcer.start()
    return NetControlBridge(enforcer), firewall


def test_add_blocks_and_echoes_the_rule(setup) -> None:
    bridge, firewall = setup
    request = rule()
    [reply] = bridge.handle(add(request, plugin=3))
    assert reply.name == RULE_ADDED
    assert reply.args[0] == Count(3) and isinstance(reply.args[0], Count)
    assert reply.args[1] == request
    assert "blocked for 600 s" in reply.args[2]
    assert firewall.members("seqwatch4") == {"198.51.100.7": 1_700_000_600.0}
    [command] = [c for c in firewall.commands if c[:2] == ("ipset", "add")]
    assert command[-2:] == ("comment", "netcontrol: NetControl rule 2 from catch-and-release")


def test_repeated_and_longer_adds(setup) -> None:
    bridge, _ = setup
    bridge.handle(add(rule()))
    assert bridge.handle(add(rule(rule_id="3")))[0].name == RULE_EXISTS
    [longer] = bridge.handle(add(rule(expire=1800, rule_id="4")))
    assert longer.name == RULE_ADDED and "extended to 1800 s" in longer.args[2]


def test_expiry_is_bounded_by_the_policy(setup) -> None:
    bridge, firewall = setup
    bridge.handle(add(rule("198.51.100.8/32", expire=0)))  # "no expiry" -> policy TTL
    bridge.handle(add(rule("198.51.100.9/32", expire=10 * 86400)))  # capped at max_ttl
    assert firewall.members("seqwatch4") == {
        "198.51.100.8": 1_700_000_060.0,
        "198.51.100.9": 1_700_003_600.0,
    }


@pytest.mark.parametrize(
    ("request_rule", "why"),
    [
        (rule("127.0.0.1/32"), "never blocked: loopback"),
        (rule("192.0.2.10/32"), "never blocked: host address"),
        (rule("198.51.100.0/24"), "single addresses only"),
        (rule(ty="NetControl::WHITELIST"), "only applies DROP rules"),
        (rule(entity="NetControl::FLOW"), "only blocks addresses"),
    ],
)
def test_refusals_become_rule_error(setup, request_rule: tuple, why: str) -> None:
    bridge, firewall = setup
    [reply] = bridge.handle(add(request_rule))
    assert reply.name == RULE_ERROR and why in reply.args[2]
    assert firewall.members("seqwatch4") == {}


def test_remove_unblocks_and_is_idempotent(setup) -> None:
    bridge, firewall = setup
    bridge.handle(add(rule()))
    [first] = bridge.handle(remove(rule()))
    assert (first.name, first.args[2]) == (RULE_REMOVED, "unblocked")
    assert firewall.members("seqwatch4") == {}
    [second] = bridge.handle(remove(rule()))
    assert second.name == RULE_REMOVED and "was not blocked" in second.args[2]


def test_off_mode_answers_with_an_error(tmp_path: Path) -> None:
    bridge = NetControlBridge(Enforcer(MitigationConfig(), SimulatedFirewall()))
    [reply] = bridge.handle(add(rule()))
    assert reply.name == RULE_ERROR and "mode is off" in reply.args[2]


def test_malformed_and_foreign_events(setup) -> None:
    bridge, _ = setup
    assert bridge.handle(Event("SeqWatch::verdict", ())) == []
    assert bridge.handle(Event(ADD_RULE, (Count(0),))) == []  # no rule to answer about
    broken = (*rule()[:3], "198.51.100.7", *rule()[4:])  # an address where a subnet goes
    [reply] = bridge.handle(add(broken))
    assert reply.name == RULE_ERROR and "r$ip" in reply.args[2]
    assert reply.args[1] == broken
    # Fields appended to the Zeek record later are ignored, and echoed back unchanged.
    [longer] = bridge.handle(add((*rule(), "future field")))
    assert longer.name == RULE_ADDED and longer.args[1][-1] == "future field"


# -- one round trip over a WebSocket --------------------------------------------------------

# The request as Zeek's WebSocket API sends it (JSON v1), written out by hand so that the
# test does not only check the codec against itself.
ADD_FRAME = {
    "type": "data-message",
    "topic": "/seqwatch/netcontrol",
    "@data-type": "vector",
    "data": [
        {"@data-type": "count", "data": 1},
        {"@data-type": "count", "data": 1},
        {
            "@data-type": "vector",
            "data": [
                {"@data-type": "string", "data": "SeqWatch::netcontrol_add_rule"},
                {
                    "@data-type": "vector",
                    "data": [
                        {"@data-type": "count", "data": 0},
                        {
                            "@data-type": "vector",
                            "data": [
                                {"@data-type": "string", "data": "7"},
                                {"@data-type": "enum-value", "data": "NetControl::DROP"},
                                {"@data-type": "enum-value", "data": "NetControl::ADDRESS"},
                                {"@data-type": "subnet", "data": "203.0.113.9/32"},
                                {"@data-type": "timespan", "data": "600s"},
                                {"@data-type": "integer", "data": 0},
                                {"@data-type": "string", "data": "notice drop"},
                            ],
                        },
                    ],
                },
            ],
        },
    ],
}


def test_websocket_round_trip(setup) -> None:
    bridge, firewall = setup
    seen: dict = {}

    async def zeek(ws: ServerConnection) -> None:
        seen["subscriptions"] = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "ack", "endpoint": "fake", "version": "8.2.2"}))
        await ws.send(json.dumps(ADD_FRAME))
        seen["reply"] = json.loads(await asyncio.wait_for(ws.recv(), 5))
        await ws.close()

    async def main() -> None:
        async with serve(zeek, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            url = f"ws://127.0.0.1:{port}/v1/messages/json"
            await asyncio.wait_for(serve_netcontrol(url, bridge), 10)

    asyncio.run(main())
    assert seen["subscriptions"] == [NETCONTROL_TOPIC]
    reply = seen["reply"]
    assert reply["type"] == "data-message" and reply["topic"] == REPLY_TOPIC
    name, args = reply["data"][2]["data"]
    assert name == {"@data-type": "string", "data": RULE_ADDED}
    plugin_id, echoed, message = args["data"]
    assert plugin_id == {"@data-type": "count", "data": 0}
    # The rule goes back with exactly the types Zeek sent, so Zeek can build the event.
    assert echoed == ADD_FRAME["data"][2]["data"][1]["data"][1]
    assert message["@data-type"] == "string" and "blocked for 600 s" in message["data"]
    assert "203.0.113.9" in firewall.members("seqwatch4")


def test_reply_event_encodes_for_zeek(setup) -> None:
    bridge, _ = setup
    [reply] = bridge.handle(add(rule()))
    frame = decode_frame(encode_event(REPLY_TOPIC, reply))
    assert frame.topic == REPLY_TOPIC and frame.event == reply
