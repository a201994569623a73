"""The live file tail: a real conn.log appended by the test, rotated and truncated."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from onnx_fixture import write_model

from seqwatch.sidecar.archives import read_connections
from seqwatch.sidecar.modelfile import OnnxModel
from seqwatch.sidecar.notices import read_notices
from seqwatch.sidecar.pipeline import Pipeline
from seqwatch.sidecar.policy import PolicyConfig, VerdictPolicy
from seqwatch.sidecar.replay import replay_files
from seqwatch.sidecar.spool import Spool
from seqwatch.sidecar.tail import FileFollower, LiveParser, Tailer

DELTA = 10.0
T = 4
T0 = 1_700_000_000.0
SLACK = 5.0

# The header of a real Zeek 8 conn.log (without ip_proto, as Zeek 6/7 write it).
FIELDS = (
    "ts uid id.orig_h id.orig_p id.resp_h id.resp_p proto service duration orig_bytes "
    "resp_bytes conn_state local_orig local_resp missed_bytes history orig_pkts "
    "orig_ip_bytes resp_pkts resp_ip_bytes tunnel_parents"
)
TYPES = (
    "time string addr port addr port enum string interval count count string bool bool "
    "count string count count count count set[string]"
)


def header() -> str:
    return (
        "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
        "#path\tconn\n#open\t2023-11-14-22-13-20\n"
        "#fields\t" + FIELDS.replace(" ", "\t") + "\n#types\t" + TYPES.replace(" ", "\t") + "\n"
    )


def close_line() -> str:
    return "#close\t2023-11-14-23-00-00\n"


def connections(seconds: int = 260, seed: int = 3) -> list[str]:
    """conn.log rows in Zeek's write (removal) order: steady clients and one scanner."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(seconds):
        for client in (1, 2, 3):
            if rng.random() < 0.7:
                rows.append((T0 + s + rng.random(), f"10.0.0.{client}", "10.0.1.1", 80, "SF"))
        if 120 <= s < 140:  # 20 seconds of scanning
            for port in range(20):
                rows.append((T0 + s + port / 40, "10.0.0.66", f"10.0.2.{port}", 1000 + s, "REJ"))
    rows.sort(key=lambda r: r[0] + 0.1)  # all removed 5 s after ts + duration (0.1 s)
    lines = []
    for i, (ts, orig, resp, port, state) in enumerate(rows):
        pkts, nbytes = (5, 400) if state == "SF" else (1, 40)
        counts = f"{pkts}\t{nbytes}\t{pkts}\t{nbytes}"
        lines.append(
            f"{ts:.6f}\tC{i:08d}\t{orig}\t40000\t{resp}\t{port}\ttcp\t-\t0.100000\t100\t200\t"
            f"{state}\tT\tT\t0\tShADadFf\t{counts}\t-\n"
        )
    return lines


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tail") / "model.onnx"
    return OnnxModel.load(write_model(path, window=T, interval=DELTA, threshold=3.0))


def expected_verdicts(model, tmp_path, rows: list[str]) -> list:
    """Replay of the same rows as one file, completing intervals like the tail does."""
    combined = tmp_path / "combined" / "conn.log"
    combined.parent.mkdir()
    combined.write_text(header() + "".join(rows) + close_line())
    return list(replay_files([combined], Pipeline(model), lateness=SLACK))


def drain(tailer: Tailer) -> list:
    out = []
    for _ in range(1000):
        before = (tailer.aggregator.rows, tailer.follower.rotations, tailer.follower.truncations)
        out += tailer.step()
        if (
            tailer.aggregator.rows,
            tailer.follower.rotations,
            tailer.follower.truncations,
        ) == before:
            return out
    raise AssertionError("the tail never settled")


def test_tail_across_rotation_and_truncation_equals_replay(model, tmp_path):
    rows = connections()
    a, b, c, d = rows[:300], rows[300:500], rows[500:800], rows[800:]
    path = tmp_path / "conn.log"
    spool = Spool(tmp_path / "notice.log")
    tailer = Tailer(path, Pipeline(model), spool=spool, slack=SLACK)
    assert tailer.step() == []  # the file does not exist yet: wait for it

    got = []
    with open(path, "w") as f:
        f.write(header() + "".join(a[:-1]) + a[-1][:17])  # ends mid-line
        f.flush()
        got += drain(tailer)
        f.write(a[-1][17:])
        f.flush()
        got += drain(tailer)
        f.write("".join(b))  # written, not read yet, when the rotation happens
        f.write(close_line())
    os.rename(path, tmp_path / "conn.22:00:00-23:00:00.log")
    with open(path, "w") as f:  # Zeek opens the next file with its own header
        f.write(header() + "".join(c))
    got += drain(tailer)
    assert tailer.follower.rotations == 1
    # copytruncate-style: the same file emptied, then written from the start.
    with open(path, "r+") as f:
        f.truncate(0)
    got += drain(tailer)
    with open(path, "w") as f:
        f.write(header() + "".join(d))
    got += drain(tailer)
    assert tailer.follower.truncations == 1
    got += tailer.finish()

    assert tailer.aggregator.rows == len(rows)
    expected = expected_verdicts(model, tmp_path, rows)
    assert got == expected
    assert any(v.host == "10.0.0.66" for v in got)
    assert list(read_notices(tmp_path / "notice.log")) == got
    assert spool.pending() == []  # no Zeek and no enforcer: delivered means done


def test_tail_loop_follows_a_file_written_meanwhile(model, tmp_path):
    rows = connections(seconds=200, seed=5)
    path = tmp_path / "conn.log"
    blocked = []

    class Enforcer:  # records what a real enforcer would be asked to block
        def block(self, addr, reason):
            blocked.append((addr, reason))

    spool = Spool(tmp_path / "notice.log")
    tailer = Tailer(
        path, Pipeline(model), spool=spool, enforcer=Enforcer(), slack=SLACK, poll_interval=0.2
    )
    stop = threading.Event()
    runner = threading.Thread(target=tailer.run, args=(stop,))
    runner.start()
    try:
        with open(path, "w") as f:
            f.write(header())
            for i in range(0, len(rows), 97):
                f.write("".join(rows[i : i + 97]))
                f.flush()
                if i == 97 * 4:
                    f.write(close_line())
                    f.close()
                    os.rename(path, tmp_path / "conn.1.log")
                    f = open(path, "w")  # noqa: SIM115 -- rotated like Zeek does
                    f.write(header())
                time.sleep(0.02)
            f.close()
        deadline = time.monotonic() + 20
        while tailer.aggregator.rows < len(rows) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        tailer.wake()
        runner.join(timeout=10)
    assert not runner.is_alive()
    assert tailer.aggregator.rows == len(rows)
    tailer.finish()
    expected = expected_verdicts(model, tmp_path, rows)
    assert list(read_notices(tmp_path / "notice.log")) == expected
    assert [addr for addr, _ in blocked] == [v.host for v in expected]
    assert all(reason.startswith("seqwatch ") for _, reason in blocked)


def test_restarted_tail_rereads_without_duplicating_notices(model, tmp_path):
    rows = connections(seconds=120, seed=7)
    path = tmp_path / "conn.log"
    path.write_text(header() + "".join(rows))
    first = Tailer(path, Pipeline(model), spool=Spool(tmp_path / "notice.log"), slack=SLACK)
    got = drain(first)
    assert got
    first.spool.close()
    # A restart reads the file from the beginning again (warm windows): same verdicts,
    # already in the notice log, so nothing is written twice.
    again = Tailer(path, Pipeline(model), spool=Spool(tmp_path / "notice.log"), slack=SLACK)
    assert drain(again) == []
    assert list(read_notices(tmp_path / "notice.log")) == got


def test_start_at_end_skips_existing_rows_but_keeps_the_header(tmp_path):
    rows = connections(seconds=30)
    path = tmp_path / "conn.log"
    path.write_text(header() + "".join(rows[:40]) + rows[40][:10])
    follower = FileFollower(path, start="end")
    parser = LiveParser(str(path))
    chunks = []
    for kind, value in follower.read():
        if kind == "data":
            chunks += parser.feed(value)
    assert chunks == []  # only the header was read
    with open(path, "a") as f:
        f.write(rows[40][10:] + "".join(rows[41:50]))
    for kind, value in follower.read():
        if kind == "data":
            chunks += parser.feed(value)
    # Reading starts at the line that was being written: it is read whole, with the rest.
    assert sum(len(c) for c in chunks) == 10


def test_live_parser_releases_rows_at_once_and_follows_json(tmp_path):
    parser = LiveParser("conn.log")
    rows = connections(seconds=5)
    assert sum(len(c) for c in parser.feed((header() + rows[0]).encode())) == 1
    assert parser.feed(rows[1][:20].encode()) == []
    assert sum(len(c) for c in parser.feed((rows[1][20:] + rows[2]).encode())) == 2
    assert parser.feed(close_line().encode()) == []

    jparser = LiveParser("conn.json")
    record = {
        **{"ts": T0, "uid": "C1", "id.orig_h": "10.0.0.1", "id.orig_p": 1},
        **{"id.resp_h": "10.0.0.2", "id.resp_p": 80, "proto": "tcp", "conn_state": "SF"},
        **{"duration": 0.1, "orig_pkts": 1, "resp_pkts": 1},
        **{"orig_ip_bytes": 40, "resp_ip_bytes": 40},
    }
    line = json.dumps(record) + "\n"
    (chunk,) = jparser.feed(line.encode())
    assert len(chunk) == 1 and jparser.format == "zeek-json"
    assert sum(len(c) for c in jparser.feed((line * 3).encode())) == 3


def test_tail_of_a_suricata_eve_json_equals_replay(model, tmp_path):
    source = Path(__file__).parent / "data" / "readers" / "eve-flows.json"
    lines = source.read_text().splitlines(keepends=True)
    path = tmp_path / "eve.json"
    pipeline = Pipeline(model, VerdictPolicy(PolicyConfig(threshold=0.5)))
    # EVE writes flows in end order, not by start: with a minute of slack none is late
    # whatever the read pattern, so line-by-line tailing must equal reading it whole.
    tailer = Tailer(path, pipeline, slack=60.0)
    got = []
    with open(path, "w") as f:
        for line in lines:
            f.write(line)
            f.flush()
            got += drain(tailer)
    got += tailer.finish()
    flows = sum(len(chunk) for chunk in read_connections([source]))  # other events skipped
    assert tailer.aggregator.rows == flows
    assert pipeline.stats.intervals > 0
    replay = Pipeline(model, VerdictPolicy(PolicyConfig(threshold=0.5)))
    expected = list(replay_files([source], replay, lateness=60.0))
    assert tailer.aggregator.late == 0

    # Within an interval the featurizer orders hosts by when it first saw their address,
    # which depends on how the input was cut; the verdicts themselves must not.
    def key(v):
        return v.start, v.host

    assert got and sorted(got, key=key) == sorted(expected, key=key)


def test_seqwatch_run_tail_as_a_service(model, tmp_path):
    """`seqwatch run --tail` end to end: a process, a growing file, SIGHUP, SIGTERM."""
    import signal
    import subprocess
    import sys

    conn = tmp_path / "conn.log"
    notices = tmp_path / "log" / "notice.log"
    config = tmp_path / "seqwatch.toml"
    config.write_text(f'[model]\npath = "{model.path}"\n[tail]\npoll_interval = 0.1\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQWATCH_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "seqwatch.sidecar.cli", "run", "--config", str(config),
         "--tail", str(conn), "--notices", str(notices)],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        rows = connections()
        with open(conn, "w") as f:
            f.write(header())
            for i in range(0, len(rows), 200):
                f.write("".join(rows[i : i + 200]))
                f.flush()
                time.sleep(0.05)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
            v.host == "10.0.0.66" for v in (read_notices(notices) if notices.exists() else [])
        ):
            time.sleep(0.1)
        os.rename(notices, tmp_path / "log" / "notice.log.1")
        proc.send_signal(signal.SIGHUP)  # reopen: a fresh notice.log appears
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not notices.exists():
            time.sleep(0.1)
        assert notices.exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read()
    verdicts = list(read_notices(tmp_path / "log" / "notice.log.1"))
    assert any(v.host == "10.0.0.66" for v in verdicts), stderr
    # seqwatch run warms up for T intervals: nothing before the windows are full.
    first = min(v.start for v in verdicts)
    assert first >= (T0 // DELTA + T) * DELTA
    assert "SIGTERM: stopping" in stderr
