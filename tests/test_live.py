"""The live WebSocket client against the fake Zeek: handshake, frames, backpressure, TLS.

Real data end to end (replay equivalence, Zeek restarts, malformed frames mid-stream) is
in test_e2e.py; here the traffic is synthetic so each behaviour can be pinned down.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import logging
import os
import random
import signal
import ssl
import threading
from pathlib import Path

import numpy as np
import pytest
from fakezeek import FakeZeek, SlowPipeline, running_sidecar, sidecar_config
from onnx_fixture import write_model

from seqwatch.sidecar.codec import Count, Enum, Event, WireError, decode_frame, encode_event
from seqwatch.sidecar.features import IntervalFeatures
from seqwatch.sidecar.live import (
    Backlog,
    LiveClient,
    LiveOptions,
    backoff_delays,
    run_live,
)
from seqwatch.sidecar.messages import (
    FEATURES_TOPIC,
    NETCONTROL_TOPIC,
    VERDICT_EVENT,
    FeatureMessage,
    Verdict,
    fast_feature_message,
)
from seqwatch.sidecar.metrics import Metrics
from seqwatch.sidecar.modelfile import OnnxModel
from seqwatch.sidecar.pipeline import Pipeline
from seqwatch.sidecar.replay import as_feature_messages
from seqwatch.sidecar.schema import N_FEATURES, SCHEMA_ID
from seqwatch.sidecar.spool import Spool

DELTA = 60.0
T = 4
BASE_BIN = 29_000_000  # 2025-02-22: plausible epoch intervals


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> OnnxModel:
    path = tmp_path_factory.mktemp("model") / "m.onnx"
    return OnnxModel.load(write_model(path, window=T, interval=DELTA, threshold=1.0))


def intervals(n_bins: int, n_hosts: int, seed: int = 1) -> list[IntervalFeatures]:
    """Steady traffic with a jump every third interval for one host (so verdicts come)."""
    rng = np.random.default_rng(seed)
    hosts = [f"10.1.{i // 200}.{i % 200 + 1}" for i in range(n_hosts)]
    out = []
    for b in range(n_bins):
        values = rng.poisson(30, size=(n_hosts, N_FEATURES)).astype(np.float64)
        if b % 3 == 2:
            values[b % n_hosts] *= 50
        out.append(IntervalFeatures(BASE_BIN + b, DELTA, hosts, values))
    return out


def chunks(ivs: list[IntervalFeatures], per: int) -> list[FeatureMessage]:
    return [m for iv in ivs for m in as_feature_messages(iv, per, node="zeek")]


def offline(model: OnnxModel, messages: list[FeatureMessage]) -> list[Verdict]:
    pipeline = Pipeline(model)
    return [v for m in messages for v in pipeline.on_features(m)]


def received_verdicts(zeek: FakeZeek) -> list[Verdict]:
    return [Verdict.from_event(e) for e in zeek.received_events(VERDICT_EVENT)]


async def until(predicate, timeout: float = 10.0) -> None:
    """Poll ``predicate`` (state outside the fake, which has no change notifications)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def run(coro_fn, timeout: float = 60.0):
    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro_fn()

    return asyncio.run(bounded())


# -- units ----------------------------------------------------------------------------------------
def message(start: float, n_hosts: int, chunk: int = 0, chunks: int = 1) -> FeatureMessage:
    return FeatureMessage(
        node="zeek",
        start=start,
        width=DELTA,
        schema=SCHEMA_ID,
        chunk=chunk,
        chunks=chunks,
        late=0,
        overflow=0,
        hosts=tuple(f"10.9.{chunk}.{i + 1}" for i in range(n_hosts)),
        values=np.ones((n_hosts, N_FEATURES)),
    )


def test_backlog_drops_whole_oldest_intervals_first():
    async def main():
        backlog = Backlog(max_hosts=10)
        for start in (0.0, 60.0):
            for c in range(2):
                assert backlog.put(message(start, 2, c, 2)).messages == 0
        assert backlog.hosts == 8
        # 4 more hosts do not fit: interval 0 goes whole (both chunks), interval 60 stays.
        dropped = backlog.put(message(120.0, 4))
        assert (dropped.messages, dropped.intervals, dropped.hosts) == (2, 1, 4)
        got = [await backlog.get() for _ in range(len(backlog))]
        assert [(m.start, m.chunk) for m in got] == [(60.0, 0), (60.0, 1), (120.0, 0)]
        assert backlog.hosts == 0

    run(main)


def test_backlog_cuts_the_newest_interval_only_when_it_alone_overflows():
    async def main():
        backlog = Backlog(max_hosts=5)
        total = [backlog.put(message(0.0, 2, c, 4)) for c in range(4)]
        assert sum(d.messages for d in total) == 2  # its two oldest chunks
        assert sum(d.intervals for d in total) == 1  # one interval affected, counted once
        assert [(await backlog.get()).chunk for _ in range(2)] == [2, 3]
        # An empty chunk still weighs one host: the backlog is bounded in messages too.
        for _ in range(20):
            backlog.put(message(60.0, 0))
        assert len(backlog) == 5

    run(main)


def test_backoff_doubles_to_the_cap_with_jitter():
    delays = backoff_delays(1.0, 8.0, random.Random(7))
    got = [next(delays) for _ in range(8)]
    nominal = [1, 2, 4, 8, 8, 8, 8, 8]
    assert all(n / 2 <= d <= n for d, n in zip(got, nominal, strict=True))
    assert len(set(got)) == len(got)  # jittered, not lock-step


def test_reader_classifies_and_counts_every_bad_frame(model, tmp_path, caplog):
    config = sidecar_config("ws://127.0.0.1:9/v1/messages/json")
    options = LiveOptions(max_message_bytes=4096, handle_signals=False)
    with Spool(tmp_path / "n.log", "tsv", fsync="never") as spool:
        client = LiveClient(config, Pipeline(model), spool, Metrics(), options=options)
        good = message(BASE_BIN * DELTA, 3)
        good_frame = encode_event(FEATURES_TOPIC, good.to_event())
        foreign = good.to_event()
        foreign_args = list(foreign.args)
        foreign_args[3] = "seqwatch.features.v0"
        short_row = list(foreign.args)
        short_row[9] = ((1.0,) * (N_FEATURES - 1),) * 3
        wrong_type = json.loads(good_frame)
        wrong_type["data"][2]["data"][1]["data"][4]["@data-type"] = "cnt"
        frames = {
            "too_large": " " * 5000,
            "invalid_json": "{not json",
            "invalid_frame": json.dumps(wrong_type),
            "unknown_event": encode_event(FEATURES_TOPIC, Event("Other::thing", (Count(1),))),
            "schema": encode_event(FEATURES_TOPIC, Event(foreign.name, tuple(foreign_args))),
            "invalid_message": encode_event(FEATURES_TOPIC, Event(foreign.name, tuple(short_row))),
        }
        with caplog.at_level(logging.WARNING, logger="seqwatch.live"):
            for frame in frames.values():
                client.on_frame(frame.encode())
            client.on_frame(b'{"type":"error","code":"deserialization_failed","context":"x"}')
            client.on_frame(good_frame.encode())
        assert {r: client.stats.rejected[r] for r in frames} == dict.fromkeys(frames, 1)
        assert client.stats.zeek_errors == {"deserialization_failed": 1}
        assert len(client.backlog) == 1 and client.stats.feature_messages == 1
        text = caplog.text
        for reason in frames:
            assert f"({reason})" in text
        assert "Zeek reports an error: deserialization_failed: x" in text
        # The same reason again within a minute is not logged again (no log floods).
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="seqwatch.live"):
            client.on_frame(b"{not json")
        assert caplog.text == "" and client.stats.rejected["invalid_json"] == 2


def test_fast_path_decodes_exactly_what_the_codec_accepts():
    good = message(BASE_BIN * DELTA, 4)
    event = good.to_event()
    with_metadata = Event(event.name, event.args, ((1, dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),))
    for ev in (event, with_metadata):
        frame = encode_event(FEATURES_TOPIC, ev)
        generic = FeatureMessage.from_event(decode_frame(frame).event)
        assert fast_feature_message(frame) == generic == fast_feature_message(frame.encode())

    def mutated(edit) -> str:
        obj = json.loads(encode_event(FEATURES_TOPIC, event))
        edit(obj["data"][2]["data"][1]["data"])
        return json.dumps(obj)

    def set_cell(args, value):
        args[9]["data"][0]["data"][3]["data"] = value

    variants = {
        "real written as an integer": lambda a: set_cell(a, 7),
        "real as a string": lambda a: set_cell(a, "7.0"),
        "count where a real goes": lambda a: a[9]["data"][1]["data"][0].update(
            {"@data-type": "count"}
        ),
        "blank around an address": lambda a: a[8]["data"][0].update(data=" 10.9.0.1"),
        "an address that is none": lambda a: a[8]["data"][0].update({"@data-type": "none"}),
        "15 features": lambda a: a[9]["data"][2]["data"].pop(),
        "hosts not a vector": lambda a: a[8].update({"@data-type": "set"}),
        "a negative value": lambda a: set_cell(a, -1.0),
        "an argument missing": lambda a: a.pop(4),
    }
    for what, edit in variants.items():
        frame = mutated(edit)
        assert fast_feature_message(frame) is None, what
        with pytest.raises(WireError):  # the generic path refuses it too, and says why
            FeatureMessage.from_event(decode_frame(frame).event)
    assert fast_feature_message(b"\xff{") is None
    assert fast_feature_message('{"type": "error", "code": "x", "context": "y"}') is None


# -- against the fake Zeek ------------------------------------------------------------------------
def test_verdicts_arrive_in_order_and_metrics_show_them(model, tmp_path):
    messages = chunks(intervals(12, 30), per=8)
    expected = offline(model, messages)
    assert expected

    async def main():
        async with FakeZeek() as zeek:
            config = sidecar_config(zeek.url)
            async with running_sidecar(config, Pipeline(model), tmp_path / "n.log") as client:
                await zeek.wait_connected()
                for m in messages:
                    await zeek.publish(FEATURES_TOPIC, m.to_event())
                await zeek.wait_received(len(expected))
                await asyncio.sleep(0.2)
                assert received_verdicts(zeek) == expected
                assert client.spool.pending_count == 0
                text = client.metrics.render().decode()
                assert f"seqwatch_verdicts_sent_total {float(len(expected))}" in text
                assert "seqwatch_zeek_connected 1.0" in text
                assert f"seqwatch_feature_messages_total {float(len(messages))}" in text
                assert client.stats.zeek_version == "8.2.2"
            # Stopped: a normal close (1000), and every verdict went to the verdicts topic.
            assert zeek.clients[0].close_code == 1000
            assert {m.topic for m in zeek.received} == {"/seqwatch/verdicts"}

    run(main)


def test_no_ack_times_out_and_retries_until_zeek_acks(model, tmp_path, caplog):
    async def main():
        async with FakeZeek(backend=False) as zeek:
            config = sidecar_config(zeek.url)
            options = LiveOptions(ack_timeout=0.2, handle_signals=False)
            with caplog.at_level(logging.INFO, logger="seqwatch.live"):
                async with running_sidecar(
                    config, Pipeline(model), tmp_path / "n.log", options=options
                ) as client:
                    await zeek.wait_for(lambda: len(zeek.clients) >= 3, timeout=10)
                    assert client.stats.connect_failures >= 2 and client.stats.sessions == 0
                    zeek.backend = True  # the operator loads a cluster backend
                    await until(lambda: client.stats.sessions == 1)
        assert "no ack within 0.2 s" in caplog.text
        assert "policy/frameworks/cluster/websocket/server" in caplog.text
        assert "connected to Zeek 8.2.2" in caplog.text

    run(main)


def test_zeek_error_frames_do_not_end_the_session(model, tmp_path):
    messages = chunks(intervals(9, 5), per=5)
    expected = offline(model, messages)

    async def main():
        async with (
            FakeZeek() as zeek,
            running_sidecar(
                sidecar_config(zeek.url), Pipeline(model), tmp_path / "n.log"
            ) as client,
        ):
            await zeek.wait_connected()
            for i, m in enumerate(messages):
                if i % 3 == 0:
                    await zeek.send_error("deserialization_failed", "failed to create Zeek event")
                await zeek.publish(FEATURES_TOPIC, m.to_event())
            await zeek.wait_received(len(expected))
            assert received_verdicts(zeek) == expected
            assert client.stats.zeek_errors["deserialization_failed"] == 3
            assert client.stats.sessions == 1 and len(zeek.clients) == 1
            text = client.metrics.render().decode()
            assert 'seqwatch_zeek_errors_total{code="deserialization_failed"} 3.0' in text

    run(main)


def test_backpressure_drops_oldest_and_keeps_answering_pings(model, tmp_path):
    """A scorer 0.6 s per chunk: the loop must keep reading, or Zeek's pings go unanswered."""
    ivs = intervals(30, 6)
    messages = chunks(ivs, per=3)  # 60 chunks of 3 hosts, two per interval

    async def main():
        # Zeek pings every 0.1 s and drops a client whose pong is 0.4 s late.
        async with FakeZeek(ping_interval=0.1, ping_timeout=0.4) as zeek:
            slow = SlowPipeline(Pipeline(model), delay=0.6)
            # Room for one interval (two chunks of three hosts).
            options = LiveOptions(backlog_hosts=6, handle_signals=False)
            async with running_sidecar(
                sidecar_config(zeek.url), slow, tmp_path / "n.log", options=options
            ) as client:
                await zeek.wait_connected()
                for m in messages:
                    await zeek.publish(FEATURES_TOPIC, m.to_event())
                # Everything is read at once although hardly anything was scored yet.
                await until(lambda: client.stats.feature_messages == len(messages))
                assert len(slow.seen) <= 2
                # Until the last chunk was scored (nothing else is left by then).
                await until(lambda: bool(slow.seen) and slow.seen[-1] == messages[-1], timeout=20)
                s = client.stats
                assert zeek.clients[0].dropped is None and s.sessions == 1
                seen = [(m.start, m.chunk) for m in slow.seen]
                sent = [(m.start, m.chunk) for m in messages]
                dropped = [k for k in sent if k not in seen]
                # Nothing vanished uncounted, and what was dropped is older than the newest
                # intervals, which were scored complete.
                assert len(dropped) == s.dropped_messages > 0
                assert s.dropped_intervals == len({start for start, _ in dropped})
                assert s.dropped_hosts == 3 * len(dropped)
                assert seen[-2:] == sent[-2:]
                assert max(start for start, _ in dropped) < sent[-1][0]
                text = client.metrics.render().decode()
                assert (
                    f"seqwatch_backlog_dropped_intervals_total {float(s.dropped_intervals)}" in text
                )

    run(main)


def test_stop_scores_the_backlog_sends_and_closes_normally(model, tmp_path):
    messages = chunks(intervals(8, 4), per=2)
    expected = offline(model, messages)

    async def main():
        async with FakeZeek() as zeek:
            gate = threading.Event()
            slow = SlowPipeline(Pipeline(model), gate=gate)
            async with running_sidecar(
                sidecar_config(zeek.url), slow, tmp_path / "n.log"
            ) as client:
                await zeek.wait_connected()
                for m in messages:
                    await zeek.publish(FEATURES_TOPIC, m.to_event())
                await until(lambda: client.stats.feature_messages == len(messages))
                # Stop while every chunk still waits (the scorer is held), then let it go.
                client.stop.set()
                await asyncio.sleep(0.1)
                assert len(client.backlog) >= len(messages) - 1 and not zeek.received
                gate.set()
            assert len(slow.seen) == len(messages)
            assert received_verdicts(zeek) == expected
            assert (zeek.clients[0].close_code, zeek.clients[0].close_reason) == (
                1000,
                "seqwatch stopping",
            )

    run(main)


def test_sigterm_stops_the_client(model, tmp_path):
    async def main():
        async with FakeZeek() as zeek:
            with Spool(tmp_path / "n.log", "tsv", fsync="never") as spool:
                task = asyncio.create_task(
                    run_live(sidecar_config(zeek.url), Pipeline(model), spool, Metrics())
                )
                await zeek.wait_connected()
                os.kill(os.getpid(), signal.SIGTERM)
                assert await asyncio.wait_for(task, 10) == 0
            assert zeek.clients[0].close_code == 1000
        # The handler is gone again: SIGTERM's disposition is back to the default.
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

    run(main)


def test_spooled_verdicts_from_an_earlier_run_go_first(model, tmp_path):
    first = chunks(intervals(6, 4), per=4)
    expected = offline(model, first)
    old = Verdict("10.2.0.1", 60.0, DELTA, 9.0, 1.0, "old-model", ("out_conns",), (4.0,))

    async def main():
        with Spool(tmp_path / "n.log", "tsv", fsync="never") as spool:
            spool.append([old])  # left unsent by a sidecar that died
        async with (
            FakeZeek() as zeek,
            running_sidecar(
                sidecar_config(zeek.url), Pipeline(model), tmp_path / "n.log"
            ) as client,
        ):
            await zeek.wait_received(1)
            for m in first:
                await zeek.publish(FEATURES_TOPIC, m.to_event())
            await zeek.wait_received(1 + len(expected))
            assert received_verdicts(zeek) == [old, *expected]
            assert client.stats.verdicts_resent == 1

    run(main)


# -- mitigation -----------------------------------------------------------------------------------
def dry_run_enforcer(tmp_path: Path):
    from seqwatch.sidecar.mitigation import Enforcer, MitigationConfig, SimulatedFirewall

    clock = lambda: 1_700_000_000.0  # noqa: E731
    config = MitigationConfig(mode="enforce", audit_log=tmp_path / "audit.jsonl", ttl=60)
    enforcer = Enforcer(
        config, SimulatedFirewall(clock, host_addresses=["192.0.2.10/24"]), clock=clock
    )
    enforcer.start()
    return enforcer


def test_verdicts_go_to_the_enforcer_without_netcontrol(model, tmp_path):
    messages = chunks(intervals(9, 3), per=3)
    expected = offline(model, messages)
    enforcer = dry_run_enforcer(tmp_path)

    async def main():
        async with (
            FakeZeek() as zeek,
            running_sidecar(
                sidecar_config(zeek.url), Pipeline(model), tmp_path / "n.log", enforcer=enforcer
            ),
        ):
            await zeek.wait_connected()
            for m in messages:
                await zeek.publish(FEATURES_TOPIC, m.to_event())
            await zeek.wait_received(len(expected))

    run(main)
    blocked = {e.address for e in enforcer.status()}
    assert blocked == {v.host for v in expected}


def test_netcontrol_requests_are_answered_and_verdicts_do_not_block(model, tmp_path):
    enforcer = dry_run_enforcer(tmp_path)
    rule = (
        "7",
        Enum("NetControl::DROP"),
        Enum("NetControl::ADDRESS"),
        ipaddress.ip_network("198.51.100.9/32"),
        dt.timedelta(seconds=600),
        0,
        "catch-and-release",
    )
    messages = chunks(intervals(6, 3), per=3)
    expected = offline(model, messages)

    async def main():
        async with FakeZeek() as zeek:
            config = sidecar_config(zeek.url, topics=[FEATURES_TOPIC, NETCONTROL_TOPIC])
            async with running_sidecar(
                config, Pipeline(model), tmp_path / "n.log", enforcer=enforcer
            ) as client:
                await zeek.wait_connected()
                await zeek.publish(
                    NETCONTROL_TOPIC, Event("SeqWatch::netcontrol_add_rule", (Count(1), rule))
                )
                for m in messages:
                    await zeek.publish(FEATURES_TOPIC, m.to_event())
                await zeek.wait_received(1 + len(expected))
                [reply] = [m for m in zeek.received if m.topic == "/seqwatch/replies/netcontrol"]
                assert reply.event.name == "SeqWatch::netcontrol_rule_added"
                assert reply.event.args[:2] == (Count(1), rule)
                assert client.stats.netcontrol_requests == 1

    run(main)
    # Only NetControl's address: with NetControl on, verdicts become notices, not blocks.
    assert {e.address for e in enforcer.status()} == {"198.51.100.9"}


# -- TLS ------------------------------------------------------------------------------------------
class Pki:
    """A throw-away CA with server and client certificates (files in ``root``)."""

    def __init__(self, root: Path):
        crypto = pytest.importorskip("cryptography")
        del crypto
        self.root = root
        self.ca_key, self.ca_cert = self._issue("seqwatch test CA", None, ca=True)
        self.ca = self._write("ca", self.ca_key, self.ca_cert, with_key=False)

    def _issue(self, name: str, sans, *, ca: bool = False, issuer=None):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        signer_key, signer_name = issuer or (key, subject)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(signer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if not ca:
            usage = ExtendedKeyUsageOID.SERVER_AUTH if sans else ExtendedKeyUsageOID.CLIENT_AUTH
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return key, builder.sign(signer_key, hashes.SHA256())

    def _write(self, stem: str, key, cert, *, with_key: bool = True) -> Path:
        from cryptography.hazmat.primitives import serialization

        cert_path = self.root / f"{stem}.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if with_key:
            (self.root / f"{stem}.key").write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        return cert_path

    def leaf(
        self, stem: str, *, dns: str | None = None, ip: str | None = None
    ) -> tuple[Path, Path]:
        from cryptography import x509

        sans = [x509.DNSName(dns)] if dns else []
        if ip:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        key, cert = self._issue(stem, sans, issuer=(self.ca_key, self.ca_cert.subject))
        return self._write(stem, key, cert), self.root / f"{stem}.key"

    def server_context(self, stem: str, *, require_client: bool = False, **names) -> ssl.SSLContext:
        cert, key = self.leaf(stem, **names)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        if require_client:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context


def tls_session(model, tmp_path, server: ssl.SSLContext, **zeek_keys) -> tuple[int, int]:
    """(sessions, connect failures) of a sidecar against a TLS fake, after its first try."""

    async def main():
        async with (
            FakeZeek(ssl_context=server) as zeek,
            running_sidecar(
                sidecar_config(zeek.url, **zeek_keys), Pipeline(model), tmp_path / "n.log"
            ) as client,
        ):
            s = client.stats
            await until(lambda: s.sessions + s.connect_failures > 0)
            return s.sessions, s.connect_failures

    return run(main)


def test_tls_verifies_the_server_against_the_configured_ca(model, tmp_path):
    pki = Pki(tmp_path)
    server = pki.server_context("zeek", ip="127.0.0.1")
    assert tls_session(model, tmp_path, server, tls_ca=str(pki.ca)) == (1, 0)


def test_tls_refuses_a_certificate_for_another_host_unless_told(model, tmp_path, caplog):
    pki = Pki(tmp_path)
    server = pki.server_context("zeek", dns="zeek.example.org")
    with caplog.at_level(logging.WARNING, logger="seqwatch.live"):
        sessions, failures = tls_session(model, tmp_path, server, tls_ca=str(pki.ca))
    assert sessions == 0 and failures >= 1
    assert "TLS verification failed" in caplog.text
    # tls_verify = false: for a test set-up, with a warning in the log.
    assert tls_session(model, tmp_path, server, tls_ca=str(pki.ca), tls_verify=False)[0] == 1


def test_tls_client_certificate(model, tmp_path):
    pki = Pki(tmp_path)
    server = pki.server_context("zeek", ip="127.0.0.1", require_client=True)
    cert, key = pki.leaf("sidecar")
    assert tls_session(model, tmp_path, server, tls_ca=str(pki.ca))[0] == 0
    keys = {"tls_ca": str(pki.ca), "tls_cert": str(cert), "tls_key": str(key)}
    assert tls_session(model, tmp_path, server, **keys) == (1, 0)
