"""Building labelled windows from real captures (lab2, Stratosphere 008, 002)."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest

from seqwatch.sidecar.archives import read_connections
from seqwatch.sidecar.features import featurize
from seqwatch.sidecar.problems import InputError
from seqwatch.sidecar.schema import FEATURE_INDEX, FeatureConfig
from seqwatch.sidecar.windows import iter_windows
from seqwatch.training import dataset

T = 8


@pytest.fixture(scope="module")
def lab2(shared_data: Path) -> dataset.WindowSet:
    return dataset.build(
        [shared_data / "lab2" / "conn.log"],
        config=FeatureConfig(10.0),
        window=T,
        label_files=[shared_data / "lab2" / "attack_uids.tsv"],
        progress=False,
    )


def _attack_rows(shared_data: Path) -> list[dict]:
    with open(shared_data / "lab2" / "attack_uids.tsv", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_lab2_positive_hosts_are_exactly_the_attack_originators(lab2, shared_data):
    rows = _attack_rows(shared_data)
    originators = {r["orig_h"] for r in rows}
    assert set(lab2.hosts[lab2.labels == 1]) == originators
    # Each positive window names its attack; the spoofed flood has one source per SYN.
    names, counts = np.unique(lab2.detailed[lab2.labels == 1], return_counts=True)
    kinds = dict(zip(names, counts, strict=True))
    assert set(kinds) == {r["kind"] for r in rows}
    flood_sources = {r["orig_h"] for r in rows if r["kind"] == "syn_flood_spoofed"}
    assert kinds["syn_flood_spoofed"] >= len(flood_sources) > 7900
    assert set(lab2.detailed[lab2.labels != 1]) == {""}


def test_lab2_counts_and_classes(lab2):
    c = lab2.counts()
    # Every lab2 connection is labelled (attack uid or benign): nothing excluded.
    assert c["excluded"] == 0
    assert c["positive"] + c["negative"] == c["windows"] == len(lab2)
    assert lab2.windows.shape == (len(lab2), T + 1, 16)
    assert lab2.windows.dtype == np.float32
    assert np.all(np.diff(lab2.times) >= 0)  # intervals in time order
    assert np.all(lab2.times % 10.0 == 0)
    assert set(lab2.sources) == {"lab2"}
    assert lab2.stats["lab2"]["connections"] == 16171
    assert lab2.stats["lab2"]["labelled"]


def test_windows_are_the_sidecar_windows(lab2, shared_data):
    # Same reader, featurizer and ring buffers as the sidecar: identical arrays.
    chunks = read_connections([shared_data / "lab2" / "conn.log"])
    expected = [w for _, w in iter_windows(featurize(chunks, FeatureConfig(10.0)), T)]
    np.testing.assert_array_equal(lab2.windows, np.concatenate(expected))


def test_normal_windows_are_benign_and_attack_targets_can_be_dropped(lab2):
    normal = lab2.normal_mask()
    assert np.all(lab2.labels[normal] == 0)
    assert normal.sum() == lab2.counts()["negative"]
    strict = lab2.normal_mask(exclude_attacked=True)
    assert np.all(normal[strict]) and strict.sum() < normal.sum()
    # The slow SYN scan's victim (files, 10.88.10.7) at the height of the scan: benign
    # label (it originated nothing malicious), ~200 rejected inbound connections per 10 s.
    victim = (lab2.hosts == "10.88.10.7") & (lab2.windows[:, -1, FEATURE_INDEX["in_failed"]] > 100)
    assert victim.any()
    assert np.all(normal[victim]) and not np.any(strict[victim])
    # c6 after its horizontal scan: benign last interval, but the scan is in its history.
    c6 = lab2.hosts == "10.88.20.106"
    scan_end = lab2.times[c6 & (lab2.labels == 1)].max()
    after = c6 & (lab2.times > scan_end) & (lab2.times <= scan_end + 3 * 10)
    assert after.any() and np.all(lab2.labels[after] == 0)
    assert not np.any(strict[after])


def test_stratosphere_label_columns_and_background(shared_data):
    path = shared_data / "stratosphere" / "008-zeek-mixed" / "conn.log.labeled.gz"
    data = dataset.build([path], config=FeatureConfig(60.0), window=T, progress=False)
    # Independent count from the file: originators of Malicious rows.
    with gzip.open(path, "rt") as handle:
        fields = next(line for line in handle if line.startswith("#fields")).split("\t")[1:]
        rows = [
            dict(zip([f.strip() for f in fields], line.rstrip("\n").split("\t"), strict=True))
            for line in handle
            if not line.startswith("#")
        ]
    attackers = {r["id.orig_h"] for r in rows if r["label"] == "Malicious"}
    assert set(data.hosts[data.labels == 1]) == attackers
    assert "147.32.81.167" not in attackers  # the monitored PC only receives attacks
    c = data.counts()
    assert c["excluded"] > 0  # hosts seen only in Background connections
    assert set(data.detailed[data.labels == 1]) == {"External-Attack-to-Device"}
    assert set(data.sources) == {"008-zeek-mixed"}


def test_unlabelled_capture_is_all_normal(shared_data):
    path = shared_data / "stratosphere" / "002-zeek-scenario-port-scanning" / "conn.log.json.gz"
    data = dataset.build([path], config=FeatureConfig(60.0), window=T, progress=False)
    assert len(data) > 0
    assert np.all(data.labels == -1)
    assert not data.stats["002-zeek-scenario-port-scanning"]["labelled"]
    assert data.normal_mask().all()


def test_several_captures_stay_separate_streams(shared_data):
    strat = shared_data / "stratosphere"
    paths = [
        strat / "010-zeek-mixed/conn.log.labeled.gz",
        strat / "008-zeek-mixed/conn.log.labeled.gz",
    ]
    both = dataset.build(paths, config=FeatureConfig(60.0), window=T, progress=False)
    one = dataset.build(paths[:1], config=FeatureConfig(60.0), window=T, progress=False)
    assert list(dict.fromkeys(both.sources)) == ["010-zeek-mixed", "008-zeek-mixed"]
    mine = both.sources == "010-zeek-mixed"
    np.testing.assert_array_equal(both.windows[mine], one.windows)
    split = dataset.describe_split(both)
    assert split["008-zeek-mixed"]["first"] == "2022-06-12T22:00:00Z"


def test_malformed_lines_are_counted_or_fatal_in_strict_mode(tmp_path, shared_data):
    lines = (shared_data / "lab2" / "conn.log").read_text().splitlines(keepends=True)
    header = [line for line in lines[:10] if line.startswith("#")]
    body = [line for line in lines if not line.startswith("#")][:200]
    body.insert(50, "this is not a conn.log line\n")
    path = tmp_path / "conn.log"
    path.write_text("".join(header + body))
    data = dataset.build([path], config=FeatureConfig(10.0), window=T, progress=False)
    assert data.stats[tmp_path.name]["connections"] == 200
    assert "1 malformed line" in data.stats[tmp_path.name]["problems"]
    with pytest.raises(InputError, match=r"conn.log:\d+"):
        dataset.build([path], config=FeatureConfig(10.0), window=T, strict=True, progress=False)


def test_time_selection(lab2):
    first = lab2.times.min()
    rel = dataset.time_mask(lab2, until="+540")
    absolute = dataset.time_mask(lab2, until=str(first + 540))
    np.testing.assert_array_equal(rel, absolute)
    assert lab2.times[rel].max() < first + 540 <= lab2.times[~rel].min()
    later = dataset.time_mask(lab2, since="+9m")
    np.testing.assert_array_equal(later, ~rel)
    iso = dataset.time_mask(lab2, since="2026-12-04T21:00:30Z")
    assert lab2.times[iso].min() == 1796418030.0


def test_parse_time():
    assert dataset.parse_time("+2h") == (7200.0, True)
    assert dataset.parse_time("1796418030") == (1796418030.0, False)
    assert dataset.parse_time("2026-12-04T21:00:30") == (1796418030.0, False)
    with pytest.raises(ValueError, match="not a time"):
        dataset.parse_time("yesterday")


def test_select_and_concat_round_trip(lab2):
    mask = lab2.labels == 1
    parts = [lab2.select(mask), lab2.select(~mask)]
    joined = dataset.WindowSet.concat(parts)
    assert len(joined) == len(lab2)
    assert joined.counts()["positive"] == lab2.counts()["positive"]
    with pytest.raises(ValueError, match="differ"):
        dataset.WindowSet.concat([lab2, dataset.WindowSet.empty(FeatureConfig(60.0), T)])
