"""Label files: host/time ranges and uid lists, applied to chunks."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest

from seqwatch.sidecar.archives import read_connections, read_file
from seqwatch.sidecar.labels import LabelSet, label_class
from seqwatch.sidecar.problems import InputError
from seqwatch.sidecar.records import (
    LABEL_BACKGROUND,
    LABEL_BENIGN,
    LABEL_MALICIOUS,
    LABEL_NONE,
    chunk_from_rows,
)

# conn.log rows per attack, lab2/README.md ("Rows per attack / event")
LAB2_ATTACK_ROWS = {
    "slow_syn_scan": 3600,
    "udp_scan": 53,
    "syn_flood_spoofed": 8000,
    "ssh_bruteforce": 5,
    "ssh_session_after_bruteforce": 1,
    "http_flood": 1800,
    "horizontal_scan": 528,
    "dns_exfil": 450,
    "beacon": 20,
    "bulk_exfil_tcp": 1,
}


def counts(chunks) -> collections.Counter:
    totals = collections.Counter()
    for chunk in chunks:
        totals.update(zip(chunk.label.tolist(), chunk.detailed_label.tolist(), strict=True))
    return totals


def conn(ts: float, orig: str, resp: str, uid: str = "", **extra) -> dict:
    row = {"ts": ts, "id.orig_h": orig, "id.resp_h": resp, "id.resp_p": 80, "proto": "tcp"}
    row.update(uid=uid, **extra)
    return row


def test_lab2_uid_file_gives_the_readme_counts(shared_data: Path) -> None:
    lab2 = shared_data / "lab2"
    labels = LabelSet.load(lab2 / "attack_uids.tsv")
    assert len(labels) == 14458 and labels.others == "benign"
    found = counts(read_connections(lab2 / "conn.log", labels=labels))
    expected = {(LABEL_MALICIOUS, kind): n for kind, n in LAB2_ATTACK_ROWS.items()}
    expected[(LABEL_BENIGN, "")] = 16171 - sum(LAB2_ATTACK_ROWS.values())
    assert found == expected


def test_lab2_ranges_skip_the_spoofed_flood_and_merge_with_uids(shared_data: Path) -> None:
    lab2 = shared_data / "lab2"
    ranges = LabelSet.load(lab2 / "labels.tsv")
    assert len(ranges.ranges) == 9
    assert len(ranges.skipped) == 1 and "'spoofed'" in ranges.skipped[0]
    assert ranges.skipped[0].startswith(f"{lab2 / 'labels.tsv'}:4:")
    by_range = counts(read_connections(lab2 / "conn.log", labels=ranges))
    assert (LABEL_MALICIOUS, "syn_flood_spoofed") not in by_range
    # attacker -> victim windows catch every attributed row of these attacks
    for kind in ("slow_syn_scan", "udp_scan", "http_flood", "dns_exfil", "bulk_exfil_tcp"):
        assert by_range[(LABEL_MALICIOUS, kind)] == LAB2_ATTACK_ROWS[kind], kind
    # ... and the scanner's ordinary lookups in its window too: ranges are coarser than uids
    assert by_range[(LABEL_MALICIOUS, "horizontal_scan")] > LAB2_ATTACK_ROWS["horizontal_scan"]

    merged = LabelSet.load([lab2 / "labels.tsv", lab2 / "attack_uids.tsv"])
    both = counts(read_connections(lab2 / "conn.log", labels=merged))
    assert both[(LABEL_MALICIOUS, "syn_flood_spoofed")] == 8000
    assert sum(n for (label, _), n in both.items() if label == LABEL_MALICIOUS) >= 14458


def test_range_file_csv_with_iso_times_networks_and_peers(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(
        "# attacks seen during the exercise\n"
        "src,peer,start,end,kind\n"
        "10.0.0.5,10.0.1.0/24+10.0.2.7,2024-05-14T10:00:00Z,2024-05-14T10:05:00,scan\n"
        '10.9.0.0/16,,1715681000,1715681100,"beacon, slow"\n'
        "10.0.0.6,,1715680800,1715690000,normal\n"
    )
    labels = LabelSet.load(path, others="none")
    chunk = chunk_from_rows(
        [
            conn(1715680810, "10.0.0.5", "10.0.1.44"),  # scan: to a peer network
            conn(1715680820, "10.0.2.7", "10.0.0.5"),  # scan: the peer answering back
            conn(1715680830, "10.0.0.5", "10.0.3.1"),  # not a peer
            conn(1715681200, "10.0.0.5", "10.0.1.44"),  # after the window
            conn(1715681050, "10.9.200.3", "8.8.8.8"),  # host network
            conn(1715681050, "8.8.8.8", "10.9.200.3"),  # host only as responder: no
            conn(1715681060, "10.0.0.6", "10.0.0.5"),  # explicitly normal
        ]
    )
    out = labels.apply(chunk)
    assert out.label.tolist() == [
        LABEL_MALICIOUS,
        LABEL_MALICIOUS,
        LABEL_NONE,
        LABEL_NONE,
        LABEL_MALICIOUS,
        LABEL_NONE,
        LABEL_BENIGN,
    ]
    assert out.detailed_label.tolist() == ["scan", "scan", "", "", "beacon, slow", "", "normal"]
    assert chunk.label is None  # the input chunk is left alone
    assert np.shares_memory(out.ts, chunk.ts)


def test_uid_file_with_label_and_detailed_columns_and_existing_labels(tmp_path: Path) -> None:
    path = tmp_path / "uids.tsv"
    path.write_text("uid\tlabel\tdetailed_label\nCa\tMalicious\tC&C\nCb\tBackground\t-\n")
    labels = LabelSet.load(path)
    rows = [
        conn(1.0, "10.0.0.1", "10.0.0.2", "Ca", label="Benign"),
        conn(2.0, "10.0.0.1", "10.0.0.2", "Cb", label="Benign"),
        conn(3.0, "10.0.0.1", "10.0.0.2", "Cc", label="Benign", detailed_label="Google"),
    ]
    out = labels.apply(chunk_from_rows(rows))
    assert out.label.tolist() == [LABEL_MALICIOUS, LABEL_BACKGROUND, LABEL_BENIGN]
    assert out.detailed_label.tolist() == ["C&C", "Background", "Google"]


def test_ranges_override_only_matching_rows_of_a_labelled_log(shared_data: Path, tmp_path: Path):
    path = shared_data / "stratosphere" / "008-zeek-mixed" / "conn.log.labeled.gz"
    chunks = list(read_file(path))
    before = counts(chunks)
    first = min(float(c.ts.min()) for c in chunks)
    ranges = tmp_path / "labels.tsv"
    ranges.write_text(f"host\tstart\tend\tlabel\n104.156.155.13\t{first}\t{first + 86400}\tscan\n")
    after = counts(LabelSet.load(ranges).apply(c) for c in chunks)
    moved = after[(LABEL_MALICIOUS, "scan")]
    assert moved > 0
    assert after[(LABEL_MALICIOUS, "External-Attack-to-Device")] == 4201 - moved
    assert sum(after.values()) == sum(before.values()) == 5663
    for key in [(LABEL_BENIGN, "Microsoft"), (LABEL_BACKGROUND, "")]:
        assert after[key] == before[key]


def test_label_class_vocabulary() -> None:
    assert [label_class(t) for t in ("Benign", "normal", "Background", "unknown")] == [
        LABEL_BENIGN,
        LABEL_BENIGN,
        LABEL_BACKGROUND,
        LABEL_BACKGROUND,
    ]
    assert label_class("Malicious") == label_class("ssh_bruteforce") == LABEL_MALICIOUS


@pytest.mark.parametrize(
    "text, match",
    [
        ("host\tstart\tend\n1.2.3.4\t1\t2\n", "needs a 'label' or 'kind' column"),
        ("victim\tstart\tkind\n1.2.3.4\t1\tscan\n", "needs either a 'uid' column or host"),
        (
            "host\tstart\tend\tkind\n1.2.3.4\tsoon\t2\tscan\n",
            r"labels\.tsv:2: start/end not a time",
        ),
        (
            "host\tstart\tend\tkind\n1.2.3.4\t1\t2\n",
            r"labels\.tsv:2: 3 fields where the header has 4",
        ),
        ("host\tvictim\tstart\tend\tkind\n1.2.3.4\tweb\t1\t2\tscan\n", r"labels\.tsv:2: victim is"),
        ("# only a comment\n", "empty labels file"),
    ],
)
def test_bad_label_files_are_input_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "labels.tsv"
    path.write_text(text)
    with pytest.raises(InputError, match=match):
        LabelSet.load(path)


def test_others_must_be_known() -> None:
    with pytest.raises(ValueError, match="others"):
        LabelSet(others="malicious")
