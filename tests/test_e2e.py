"""End to end on real traffic: lab2's conn.log -> features -> fake Zeek -> sidecar -> verdicts.

The fake Zeek publishes ``SeqWatch::interval_features`` chunks exactly as main.zeek would
for the real lab2 capture (../shared/data/lab2: a live lab with real attack tools, read
with ``archives.read_connections`` and featurized with the shared featurizer). The
verdicts the sidecar sends back must be exactly those the offline :class:`Pipeline`
gives for the same messages (the replay equivalence), also across Zeek restarts and with
malformed frames mixed into the stream.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from fakezeek import FakeZeek, SlowPipeline, running_sidecar, sidecar_config
from onnx_fixture import write_model

from seqwatch.sidecar.archives import read_connections
from seqwatch.sidecar.codec import Count, Event, encode_event
from seqwatch.sidecar.features import featurize
from seqwatch.sidecar.live import LiveOptions
from seqwatch.sidecar.messages import FEATURES_TOPIC, VERDICT_EVENT, FeatureMessage, Verdict
from seqwatch.sidecar.modelfile import OnnxModel
from seqwatch.sidecar.pipeline import Pipeline
from seqwatch.sidecar.replay import as_feature_messages
from seqwatch.sidecar.schema import FeatureConfig

DELTA = 10.0  # 10 s intervals: ~150 of them in lab2's 33 minutes
HOSTS_PER_MESSAGE = 64  # small chunks, so big intervals (the SYN flood) span many messages
THRESHOLD = 8.0


@pytest.fixture(scope="module")
def lab2_messages(shared_data: Path) -> list[FeatureMessage]:
    conn = shared_data / "lab2" / "conn.log"
    if not conn.is_file():
        pytest.skip(f"{conn} not found")
    intervals = list(featurize(read_connections(conn), FeatureConfig(interval=DELTA)))
    return [m for iv in intervals for m in as_feature_messages(iv, HOSTS_PER_MESSAGE, node="zeek")]


@pytest.fixture(scope="module")
def model_path(lab2_messages, tmp_path_factory) -> Path:
    """The mean-baseline fixture model, standardized with lab2's own feature statistics."""
    logged = np.log1p(np.concatenate([m.values for m in lab2_messages]))
    return write_model(
        tmp_path_factory.mktemp("model") / "lab2.onnx",
        window=4,
        interval=DELTA,
        threshold=THRESHOLD,
        mean=logged.mean(axis=0),
        std=logged.std(axis=0) + 0.5,
    )


@pytest.fixture(scope="module")
def offline(lab2_messages, model_path) -> list[Verdict]:
    pipeline = Pipeline(OnnxModel.load(model_path))
    verdicts = [v for m in lab2_messages for v in pipeline.on_features(m)]
    # Enough verdicts, from enough intervals, for the comparisons below to mean something.
    assert len(verdicts) >= 30 and len({v.start for v in verdicts}) >= 10
    return verdicts


def received(zeek: FakeZeek) -> list[Verdict]:
    return [Verdict.from_event(e) for e in zeek.received_events(VERDICT_EVENT)]


def run(coro_fn, timeout: float = 60.0):
    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro_fn()

    return asyncio.run(bounded())


async def until(predicate, timeout: float = 20.0) -> None:
    """Poll ``predicate`` (the sidecar's state has no change notifications)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def publish(zeek: FakeZeek, messages: list[FeatureMessage]) -> None:
    for m in messages:
        assert await zeek.publish(FEATURES_TOPIC, m.to_event()) == 1


def test_live_verdicts_equal_offline_replay(lab2_messages, model_path, offline, tmp_path):
    async def main():
        async with FakeZeek() as zeek:
            pipeline = Pipeline(OnnxModel.load(model_path))
            async with running_sidecar(
                sidecar_config(zeek.url), pipeline, tmp_path / "notice.log"
            ) as client:
                await zeek.wait_connected()
                await publish(zeek, lab2_messages)
                await zeek.wait_received(len(offline), timeout=30)
                await asyncio.sleep(0.3)  # nothing more may come
                assert received(zeek) == offline
                assert pipeline.stats.incomplete == 0 and pipeline.stats.dropped_old == 0
                assert client.stats.feature_messages == len(lab2_messages)
                assert client.spool.pending_count == 0
            # The notice log (the spool) holds the same verdicts.
            notices = (tmp_path / "notice.log").read_text()
            assert sum(1 for line in notices.splitlines() if not line.startswith("#")) == len(
                offline
            )

    run(main)


def test_zeek_restarts_lose_and_duplicate_nothing(lab2_messages, model_path, offline, tmp_path):
    """Two Zeek restarts mid-stream: one while the scorer has a backlog, one a crash.

    Zeek does not buffer for absent clients, so the test (as Zeek would) publishes only
    while the sidecar is connected; what the sidecar had already received must still
    come out, exactly once and in order.
    """
    third = len(lab2_messages) // 3
    first, second, rest = (
        lab2_messages[:third],
        lab2_messages[third : 2 * third],
        lab2_messages[2 * third :],
    )
    # Verdicts due once `first` is scored: its complete intervals (the last may go on).
    from_first = [v for v in offline if v.start < first[-1].start]
    assert from_first

    async def main():
        async with FakeZeek() as zeek:
            gate = threading.Event()  # holds the scorer until Zeek is gone
            slow = SlowPipeline(Pipeline(OnnxModel.load(model_path)), gate=gate)
            async with running_sidecar(
                sidecar_config(zeek.url), slow, tmp_path / "notice.log"
            ) as client:
                await zeek.wait_connected()
                await publish(zeek, first)
                await until(lambda: client.stats.feature_messages == len(first))
                # Restart 1, graceful (1001 "Terminating", as `zeekctl deploy` does), with
                # all of `first` still waiting: it is scored while Zeek is away, and its
                # verdicts go out first after the reconnect.
                await zeek.stop()
                gate.set()
                await until(lambda: len(slow.seen) == len(first))
                assert client.spool.pending_count >= len(from_first) and not zeek.received
                await zeek.start()
                await zeek.wait_received(len(from_first), timeout=10)
                await publish(zeek, second)
                # Restart 2, a crash (TCP reset), once everything sent has arrived.
                await until(
                    lambda: (
                        len(slow.seen) == len(first) + len(second)
                        and client.spool.pending_count == 0
                        and len(zeek.received) == client.stats.verdicts_sent
                    )
                )
                await zeek.restart(graceful=False, down_for=0.2)
                await zeek.wait_connected(timeout=10)
                await publish(zeek, rest)
                await zeek.wait_received(len(offline), timeout=30)
                await asyncio.sleep(0.3)
                got = received(zeek)
                keys = [v.key for v in got]
                assert len(keys) == len(set(keys)), "a verdict arrived twice"
                assert set(keys) == {v.key for v in offline}
                assert got == offline  # and in the same order
                assert client.stats.sessions == 3
                assert client.stats.verdicts_resent >= len(from_first)
                text = client.metrics.render().decode()
                reconnects = re.search(r"^seqwatch_zeek_reconnects_total (\S+)$", text, re.M)
                assert reconnects and float(reconnects.group(1)) >= 2

    run(main)


def test_malformed_frames_are_counted_and_the_stream_goes_on(
    lab2_messages, model_path, offline, tmp_path
):
    good = lab2_messages[0]
    event = good.to_event()

    def variant(index: int, value) -> str:
        args = list(event.args)
        args[index] = value
        return encode_event(FEATURES_TOPIC, Event(event.name, tuple(args)))

    wrong_type = json.loads(encode_event(FEATURES_TOPIC, event))
    wrong_type["data"][2]["data"][1]["data"][4]["@data-type"] = "double"  # chunk: not a type
    # A width Zeek would never send with this model (Δ=10 s): the pipeline refuses it.
    other_width = FeatureMessage(
        **{**{k: getattr(good, k) for k in good.__dataclass_fields__}, "width": 30.0}
    )
    bad = {
        "invalid_json": "{not json",
        "invalid_frame": json.dumps(wrong_type),
        "schema": variant(3, "seqwatch.features.v2"),
        "invalid_message": variant(9, ((1.0,) * 15,) * len(good.hosts)),  # 15 features
        "unknown_event": encode_event(FEATURES_TOPIC, Event("SeqWatch::other", (Count(1),))),
        "too_large": json.dumps({"type": "data-message", "pad": "x" * 600_000}),
    }
    options = LiveOptions(max_message_bytes=512 * 1024, handle_signals=False)

    async def main():
        async with FakeZeek() as zeek:
            pipeline = Pipeline(OnnxModel.load(model_path))
            async with running_sidecar(
                sidecar_config(zeek.url), pipeline, tmp_path / "notice.log", options=options
            ) as client:
                await zeek.wait_connected()
                step = len(lab2_messages) // (len(bad) + 3)
                junk = [*bad.values(), encode_event(FEATURES_TOPIC, other_width.to_event())]
                for i, m in enumerate(lab2_messages):
                    if i % step == 1 and junk:
                        await zeek.publish_text(FEATURES_TOPIC, junk.pop(0))
                        await zeek.send_error(
                            "deserialization_failed", "failed to create Zeek event"
                        )
                    await zeek.publish(FEATURES_TOPIC, m.to_event())
                assert not junk
                await zeek.wait_received(len(offline), timeout=30)
                await asyncio.sleep(0.3)
                assert received(zeek) == offline  # later good messages still score
                s = client.stats
                assert {r: s.rejected[r] for r in bad} == dict.fromkeys(bad, 1)
                assert pipeline.stats.rejected["interval"] == 1
                assert s.zeek_errors["deserialization_failed"] == len(bad) + 1
                assert s.sessions == 1 and len(zeek.clients) == 1  # never reconnected
                text = client.metrics.render().decode()
                for reason in bad:
                    assert f'seqwatch_frames_rejected_total{{reason="{reason}"}} 1.0' in text
                assert 'seqwatch_messages_rejected_total{reason="interval"} 1.0' in text

    run(main)
