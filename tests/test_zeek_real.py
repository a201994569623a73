"""The Zeek package in a real Zeek: loading, features from real pcaps, notices, WebSocket.

Runs only where a ``zeek`` binary is on PATH (zkg's test_command runs this file). It
replays the captures in ``../shared/data/pcaps`` with the package loaded and
``SeqWatch::log_features=T``, then compares seqwatch_features.log with the Python
featurizer over the conn.log written by the same run: the two implementations of
schema v1 must agree.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from zeek_reference import read_tsv

from seqwatch.sidecar.codec import (
    Ack,
    DataMessage,
    Event,
    decode_frame,
    encode_event,
    subscription_frame,
)
from seqwatch.sidecar.messages import FEATURES_TOPIC, VERDICTS_TOPIC, FeatureMessage, Verdict
from seqwatch.sidecar.schema import FEATURE_INDEX, FEATURE_NAMES, FeatureConfig

ZEEK = shutil.which("zeek")
SCRIPTS = Path(__file__).resolve().parents[1] / "zeek_scripts"

pytestmark = [
    pytest.mark.zeek,
    pytest.mark.skipif(ZEEK is None, reason="needs a zeek binary on PATH (none installed here)"),
]

ADDITIVE = [name for name in FEATURE_NAMES if name not in ("out_hosts", "out_ports", "in_hosts")]


def zeek(*args: str, cwd: Path, env: dict | None = None, timeout: float = 120):
    result = subprocess.run(
        [ZEEK, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"zeek {' '.join(args)} failed:\n{result.stderr}"
    return result


def zeek_version() -> tuple[int, int]:
    out = subprocess.run([ZEEK, "--version"], capture_output=True, text=True, check=True).stdout
    major, minor = re.search(r"(\d+)\.(\d+)", out).groups()
    return int(major), int(minor)


def pcaps(shared_data: Path) -> list[Path]:
    found = sorted((shared_data / "pcaps").rglob("*.pcap")) + sorted(
        (shared_data / "pcaps").rglob("*.pcapng")
    )
    assert found, "no pcaps in the shared data"
    return found


def test_package_loads(tmp_path):
    zeek("--parse-only", str(SCRIPTS), cwd=tmp_path)  # with Zeek's default scripts
    zeek("-b", "--parse-only", str(SCRIPTS), cwd=tmp_path)  # bare mode: our @loads suffice
    result = zeek(str(SCRIPTS), cwd=tmp_path)  # runs zeek_init/zeek_done without input
    assert "SeqWatch" not in result.stderr


def logged_vectors(rows: list[dict[str, str]]) -> tuple[dict, dict]:
    """{(bin, host): vector} and {bin: late} from seqwatch_features.log rows."""
    vectors, late = {}, {}
    for row in rows:
        b = round(float(row["start"]) / float(row["width"]))
        vectors[(b, row["host"])] = np.array([float(row[name]) for name in FEATURE_NAMES])
        late[b] = int(row["late"])
    return vectors, late


def featurizer_vectors(conn_log: Path, width: float) -> dict:
    from seqwatch.sidecar.archives import read_connections
    from seqwatch.sidecar.features import featurize

    chunks = read_connections([conn_log], strict=True)
    # Batch: no streaming lateness, so every connection stays in its estimated interval.
    intervals = featurize(chunks, FeatureConfig(interval=width), lateness=1e15)
    return {
        (iv.bin, host): vector
        for iv in intervals
        for host, vector in zip(iv.hosts, iv.values, strict=True)
    }


@pytest.mark.parametrize("width", [60, 10])
def test_feature_log_equals_the_featurizer(shared_data, tmp_path, width):
    compared = 0
    for pcap in pcaps(shared_data):
        out = tmp_path / f"{pcap.stem}-{width}"
        out.mkdir()
        zeek(
            "-C", "-r", str(pcap), str(SCRIPTS),
            "SeqWatch::log_features=T", f"SeqWatch::interval_width={width}sec",
            cwd=out,
        )  # fmt: skip
        conns = read_tsv(out / "conn.log")
        if not conns:
            continue
        got, late = logged_vectors(read_tsv(out / "seqwatch_features.log"))
        want = featurizer_vectors(out / "conn.log", float(width))
        n = FEATURE_INDEX["out_conns"]
        assert sum(v[n] for v in got.values()) == len(conns), pcap.name
        for name in ADDITIVE:  # every connection counted once, wherever it landed
            i = FEATURE_INDEX[name]
            assert math.isclose(
                sum(v[i] for v in got.values()),
                sum(v[i] for v in want.values()),
                rel_tol=1e-9,
                abs_tol=1e-6 * (len(conns) + 1),
            ), (pcap.name, name)
        differing = [
            key
            for key in set(got) | set(want)
            if key not in got
            or key not in want
            or not np.allclose(got[key], want[key], rtol=1e-9, atol=1e-6 * (got[key][n] + 1))
        ]
        # A late connection changes at most its two hosts in two intervals.
        assert len(differing) <= 4 * sum(late.values()), (pcap.name, sorted(differing)[:5])
        compared += len(conns)
    assert compared > 0


RAISE_VERDICTS = """
event zeek_init() &priority=-20
    {
    event SeqWatch::verdict(SeqWatch::Verdict($host=192.168.1.10,
        $start=double_to_time(1733300040.0), $width=60sec, $error=14.2,
        $threshold=4.87, $model_id="gru-2024-12-01",
        $top_features=vector("out_ports", "out_failed"),
        $top_residuals=vector(8.1, -6.04)));
    # Malformed: a residual short. Must be reported, not fatal, and raise nothing.
    event SeqWatch::verdict(SeqWatch::Verdict($host=10.0.0.9,
        $start=double_to_time(1733300040.0), $width=60sec, $error=1.0,
        $threshold=0.5, $model_id="m", $top_features=vector("a"),
        $top_residuals=vector()));
    }
"""


def check_notice(directory: Path) -> None:
    from seqwatch.sidecar.notices import read_notices

    notices = [
        r for r in read_tsv(directory / "notice.log") if r["note"] == "SeqWatch::Traffic_Anomaly"
    ]
    assert len(notices) == 1
    (notice,) = notices
    assert notice["src"] == "192.168.1.10"
    assert notice["n"] == "1420"
    assert notice["sub"] == "out_ports +8.1σ, out_failed -6.0σ"
    assert float(notice["suppress_for"]) == 3600.0
    # The sidecar's notice reader understands Zeek's msg.
    (v,) = list(read_notices(directory / "notice.log"))
    assert (v.host, v.start, v.width, v.model_id) == (
        "192.168.1.10",
        1733300040.0,
        60.0,
        "gru-2024-12-01",
    )
    assert (v.error, v.threshold) == pytest.approx((14.2, 4.87))
    assert v.top_features == ("out_ports", "out_failed")
    assert v.top_residuals == pytest.approx((8.1, -6.04))


def test_verdicts_become_notices(tmp_path):
    script = tmp_path / "raise.zeek"
    script.write_text(RAISE_VERDICTS, encoding="utf-8")
    zeek(str(SCRIPTS), str(script), cwd=tmp_path)
    check_notice(tmp_path)
    reporter = (tmp_path / "reporter.log").read_text(encoding="utf-8")
    assert (
        "SeqWatch: ignoring a malformed verdict for 10.0.0.9: 1 top features but 0 residuals"
        in reporter
    )


WEBSOCKET_TEST = """
@load policy/frameworks/cluster/websocket/server
redef exit_only_after_terminate = T;

module SeqWatchTest;

export {
    global flush_now: event();
    global flushed: event();
    global stop: event();
}

event zeek_init()
    {
    Cluster::subscribe("/seqwatch/test");
    }

event flush_now()
    {
    SeqWatch::flush();
    Cluster::publish("/seqwatch/features/test", flushed);
    }

event stop()
    {
    terminate();
    }
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_features_and_verdicts_over_the_websocket_api(shared_data, tmp_path):
    """Zeek >= 8.1 standalone with the ZeroMQ backend, as docs/wire-protocol.md says."""
    if zeek_version() < (8, 1):
        pytest.skip("the standalone WebSocket server script needs Zeek >= 8.1")
    if subprocess.run([ZEEK, "-N", "Zeek::Cluster_Backend_ZeroMQ"], capture_output=True).returncode:
        pytest.skip("this Zeek has no ZeroMQ cluster backend")
    from websockets.sync.client import connect

    pcap = next(p for p in pcaps(shared_data) if p.name == "ftp_bruteforce.pcap")
    script = tmp_path / "ws.zeek"
    script.write_text(WEBSOCKET_TEST, encoding="utf-8")
    port = free_port()
    # A one-hour interval keeps the 59 s trace's intervals open until the flush.
    proc = subprocess.Popen(
        [ZEEK, "-C", "-r", str(pcap), str(SCRIPTS), str(script),
         "SeqWatch::log_features=T", "SeqWatch::interval_width=1hr"],
        cwd=tmp_path,
        env={**os.environ, "ZEEK_WEBSOCKET_LISTEN_PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                ws = connect(f"ws://127.0.0.1:{port}/v1/messages/json", open_timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "Zeek did not listen"
                time.sleep(0.2)
        with ws:
            ws.send(subscription_frame([FEATURES_TOPIC]))
            assert isinstance(decode_frame(ws.recv(timeout=10)), Ack)
            ws.send(encode_event("/seqwatch/test", Event("SeqWatchTest::flush_now")))
            received = []
            while True:
                frame = decode_frame(ws.recv(timeout=30))
                assert isinstance(frame, DataMessage)
                if frame.event.name == "SeqWatchTest::flushed":
                    break
                received.append(FeatureMessage.from_event(frame.event))
            verdict = Verdict(
                "192.168.1.10", 1733300040.0, 60.0, 14.2, 4.87, "gru-2024-12-01",
                ("out_ports", "out_failed"), (8.1, -6.04),
            )  # fmt: skip
            ws.send(encode_event(VERDICTS_TOPIC, verdict.to_event()))
            ws.send(encode_event("/seqwatch/test", Event("SeqWatchTest::stop")))
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()

    assert received, "no features arrived"
    logged, _ = logged_vectors(read_tsv(tmp_path / "seqwatch_features.log"))
    sent = {(m.bin, h): m.values[i] for m in received for i, h in enumerate(m.hosts)}
    assert sent.keys() <= logged.keys()
    for key, vector in sent.items():
        np.testing.assert_allclose(vector, logged[key], rtol=0, atol=1e-6)
    check_notice(tmp_path)
