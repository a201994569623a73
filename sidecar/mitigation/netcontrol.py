"""The sidecar's half of the seqwatch NetControl plugin (zeek_scripts/netcontrol.zeek).

Zeek's NetControl framework hands DROP rules for single addresses to the plugin, which
publishes them on :data:`NETCONTROL_TOPIC`::

    SeqWatch::netcontrol_add_rule(id: count, r: SeqWatch::NetControlRule)
    SeqWatch::netcontrol_remove_rule(id: count, r: SeqWatch::NetControlRule, reason: string)

    type NetControlRule: record { id: string; ty: NetControl::RuleType;
        entity_type: NetControl::EntityType; ip: subnet; expire: interval;
        priority: int; location: string; };

:class:`NetControlBridge` turns each request into an enforcer call and returns the answer,
published on :data:`REPLY_TOPIC` with the request's ``id`` and rule echoed back::

    SeqWatch::netcontrol_rule_added / _rule_exists / _rule_removed / _rule_error
        (id: count, r: SeqWatch::NetControlRule, msg: string)

The bridge does no I/O of its own (the enforcer does the firewall work), so the sidecar's
WebSocket client can feed it events from its own connection. :func:`serve_netcontrol` is
a minimal stand-alone transport for a dedicated connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass
from datetime import timedelta

from seqwatch.sidecar.codec import (
    Count,
    DataMessage,
    Enum,
    ErrorFrame,
    Event,
    Value,
    WireError,
    decode_frame,
    encode_event,
    record_fields,
    subscription_frame,
)
from seqwatch.sidecar.messages import NETCONTROL_TOPIC
from seqwatch.sidecar.mitigation.config import IPNetwork
from seqwatch.sidecar.mitigation.decisions import Decision, Outcome
from seqwatch.sidecar.mitigation.enforcer import Enforcer

log = logging.getLogger("seqwatch.mitigation.netcontrol")

REPLY_TOPIC = "/seqwatch/replies/netcontrol"
"""Where answers go (``SeqWatch::netcontrol_reply_topic``). Deliberately not under
:data:`NETCONTROL_TOPIC`: a subscription is a prefix, and the sidecar must not receive
its own answers."""

ADD_RULE = "SeqWatch::netcontrol_add_rule"
REMOVE_RULE = "SeqWatch::netcontrol_remove_rule"
RULE_ADDED = "SeqWatch::netcontrol_rule_added"
RULE_EXISTS = "SeqWatch::netcontrol_rule_exists"
RULE_REMOVED = "SeqWatch::netcontrol_rule_removed"
RULE_ERROR = "SeqWatch::netcontrol_rule_error"

RULE_FIELDS = ("id", "ty", "entity_type", "ip", "expire", "priority", "location")
"""Fields of ``SeqWatch::NetControlRule`` in declaration order (positional on the wire)."""

SOURCE = "netcontrol"


def _enum_is(value: Enum, name: str) -> bool:
    """Whether a NetControl enum value is ``name``; Zeek sends ``NetControl::DROP``."""
    return value.name in (name, f"NetControl::{name}")


@dataclass(frozen=True)
class NetControlRule:
    """A decoded ``SeqWatch::NetControlRule``; ``wire`` is the vector as received."""

    id: str
    ty: Enum
    entity_type: Enum
    ip: IPNetwork
    expire: timedelta
    priority: int
    location: str
    wire: tuple[Value, ...]

    @classmethod
    def from_wire(cls, value: Value) -> NetControlRule:
        """Check types field by field; WireError names the first bad one."""
        if not isinstance(value, tuple) or len(value) < len(RULE_FIELDS):
            raise WireError("r", f"expected a record of {len(RULE_FIELDS)} fields")
        # Fields are only ever appended to the Zeek record; ignore ones we do not know.
        fields = record_fields(value[: len(RULE_FIELDS)], RULE_FIELDS, path="r")
        expected = {
            "id": str,
            "ty": Enum,
            "entity_type": Enum,
            "ip": ipaddress.IPv4Network | ipaddress.IPv6Network,
            "expire": timedelta,
            "priority": int,
            "location": str,
        }
        for name, kind in expected.items():
            item = fields[name]
            if not isinstance(item, kind) or isinstance(item, bool):
                raise WireError(f"r${name}", f"unexpected type {type(item).__name__}")
        return cls(**fields, wire=value)

    @property
    def reason(self) -> str:
        """The audit-log reason: which rule, from where."""
        where = f" from {self.location}" if self.location else ""
        return f"NetControl rule {self.id}{where}"


class NetControlBridge:
    """Answers NetControl requests by calling the enforcer; one reply event per request."""

    def __init__(self, enforcer: Enforcer) -> None:
        self.enforcer = enforcer

    def handle(self, event: Event) -> list[Event]:
        """The reply events for one request; [] for events that are not requests.

        Never raises for a bad request: Zeek is waiting for an answer, so a request that
        cannot be read but still names its rule gets a rule_error.
        """
        if event.name not in (ADD_RULE, REMOVE_RULE):
            return []
        expected_args = 2 if event.name == ADD_RULE else 3
        if len(event.args) != expected_args or not isinstance(event.args[0], Count):
            log.warning("ignoring malformed %s with arguments %r", event.name, event.args)
            return []
        plugin_id = event.args[0]
        try:
            rule = NetControlRule.from_wire(event.args[1])
        except WireError as exc:
            log.warning("malformed rule in %s: %s", event.name, exc)
            if isinstance(event.args[1], tuple):
                return [Event(RULE_ERROR, (plugin_id, event.args[1], f"malformed rule: {exc}"))]
            return []
        if event.name == ADD_RULE:
            name, message = self._add(rule)
        else:
            reason = event.args[2] if isinstance(event.args[2], str) else ""
            name, message = self._remove(rule, reason)
        return [Event(name, (plugin_id, rule.wire, message))]

    def _refusal(self, rule: NetControlRule) -> str | None:
        """Why the enforcer cannot apply this rule at all, or None."""
        if not _enum_is(rule.ty, "DROP"):
            return f"seqwatch only applies DROP rules, not {rule.ty.name}"
        if not _enum_is(rule.entity_type, "ADDRESS"):
            return f"seqwatch only blocks addresses, not {rule.entity_type.name}"
        if rule.ip.num_addresses != 1:
            return f"seqwatch blocks single addresses only, not {rule.ip.with_prefixlen}"
        return None

    def _add(self, rule: NetControlRule) -> tuple[str, str]:
        refusal = self._refusal(rule)
        if refusal is not None:
            return RULE_ERROR, refusal
        # An unset or zero expire means "no expiry" to NetControl; seqwatch never blocks
        # forever, so the enforcer's policy TTL applies instead.
        seconds = rule.expire.total_seconds()
        decision = self.enforcer.block(
            rule.ip.network_address,
            rule.reason,
            ttl=seconds if seconds > 0 else None,
            source=SOURCE,
        )
        return _add_reply(decision), decision.message

    def _remove(self, rule: NetControlRule, reason: str) -> tuple[str, str]:
        refusal = self._refusal(rule)
        if refusal is not None:
            return RULE_ERROR, refusal
        decision = self.enforcer.unblock(rule.ip.network_address, source=SOURCE, reason=reason)
        return (RULE_REMOVED if decision.ok else RULE_ERROR), decision.message


def _add_reply(decision: Decision) -> str:
    if decision.outcome is Outcome.ALREADY_BLOCKED:
        # NetControl then keeps tracking the rule but will not ask us to expire it; the
        # set entry's own timeout ends the block.
        return RULE_EXISTS
    return RULE_ADDED if decision.ok else RULE_ERROR


async def serve_netcontrol(
    url: str,
    bridge: NetControlBridge,
    *,
    topic: str = NETCONTROL_TOPIC,
    reply_topic: str = REPLY_TOPIC,
    max_size: int = 1 << 20,
) -> None:
    """Answer NetControl requests over one WebSocket connection until it closes.

    A minimal transport: no reconnection and no TLS options (the sidecar's own client has
    those and can call :meth:`NetControlBridge.handle` directly). The enforcer runs in a
    worker thread, so a slow firewall command does not stall the event loop (and Zeek's
    pings are still answered).
    """
    import websockets

    async with websockets.connect(url, max_size=max_size) as ws:
        await ws.send(subscription_frame([topic]))
        first = decode_frame(await ws.recv())
        if isinstance(first, ErrorFrame):
            raise ConnectionError(f"Zeek refused the subscription: {first.code}: {first.context}")
        log.info("NetControl bridge subscribed to %s", topic)
        async for text in ws:
            try:
                frame = decode_frame(text)
            except WireError as exc:
                log.warning("undecodable frame from Zeek: %s", exc)
                continue
            if isinstance(frame, ErrorFrame):
                log.warning("Zeek reports %s: %s", frame.code, frame.context)
                continue
            if not isinstance(frame, DataMessage):
                continue
            for reply in await asyncio.to_thread(bridge.handle, frame.event):
                await ws.send(encode_event(reply_topic, reply))
