"""The Zeek package without Zeek: it parses, is zeek-format clean, and agrees with Python.

The script's declarations (event signature, record fields, topics, defaults, the state
sets of the removal estimate) are read from the source and compared with the Python
definitions they must match, so neither side can change alone.
"""

from __future__ import annotations

import configparser
import io
import re
import tomllib
from pathlib import Path

import pytest
import zeekscript
from zeek_reference import Settings

from seqwatch.sidecar.messages import (
    FEATURE_ARGS,
    FEATURES_EVENT,
    FEATURES_TOPIC,
    VERDICT_EVENT,
    VERDICT_FIELDS,
    VERDICTS_TOPIC,
)
from seqwatch.sidecar.schema import (
    CLOSED_STATES,
    DEFAULT_DISTINCT_CAP,
    DEFAULT_INTERVAL,
    DEFAULT_SLACK,
    FAILED_STATES,
    FEATURE_NAMES,
    LONG_TIMEOUT_PORTS,
    LONG_TIMEOUT_SERVICES,
    SCHEMA_ID,
    RemovalDelays,
)

_UNITS = {"usec": 1e-6, "msec": 1e-3, "sec": 1.0, "min": 60.0, "hr": 3600.0, "day": 86400.0}


def scripts(repo_root: Path) -> list[Path]:
    return sorted((repo_root / "zeek_scripts").glob("*.zeek"))


@pytest.fixture(scope="module")
def main_zeek(repo_root) -> str:
    return (repo_root / "zeek_scripts" / "main.zeek").read_text(encoding="utf-8")


def test_there_are_scripts(repo_root):
    names = {p.name for p in scripts(repo_root)}
    assert {"__load__.zeek", "main.zeek", "websocket.zeek"} <= names


def test_every_script_parses(repo_root):
    for path in scripts(repo_root):
        script = zeekscript.Script(path)
        assert script.parse(), f"{path.name} did not parse"
        line, _, message = script.get_error()
        assert not script.has_error(), f"{path.name}: {message} in {line!r}"


def test_every_script_is_zeek_format_clean(repo_root):
    for path in scripts(repo_root):
        script = zeekscript.Script(path)
        script.parse()
        out = io.BytesIO()
        script.format(out)
        assert out.getvalue().decode("utf-8") == path.read_text(encoding="utf-8"), (
            f"{path.name} is not in zeek-format's form; run zeek-format -i {path}"
        )


def test_load_file_loads_main_and_websocket_but_not_netcontrol(repo_root):
    loads = re.findall(
        r"^@load (\S+)", (repo_root / "zeek_scripts" / "__load__.zeek").read_text(), re.M
    )
    assert loads == ["./main", "./websocket"]


# -- declarations -----------------------------------------------------------------------------


def declared(src: str, name: str) -> str:
    """The initializer of ``const``/``option`` ``name`` in the export block."""
    match = re.search(
        rf"^\t(?:const|option) {name}(?:: [^=]+)? = (.*?)(?: &redef)?;$", src, re.M | re.S
    )
    assert match, f"{name} is not declared"
    return match.group(1)


def interval_seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?) ?(usec|msec|sec|min|hr|day)s?", text.strip())
    assert match, f"not an interval: {text}"
    return float(match.group(1)) * _UNITS[match.group(2)]


def fields_of(src: str, record: str) -> list[tuple[str, str]]:
    body = re.search(rf"type {record}: record \{{\n(.*?)\n\t*\}};", src, re.S)
    assert body, f"record {record} not found"
    return re.findall(r"^\t+(\w+): ([^;&]+?)(?: &[^;]*)?;", body.group(1), re.M)


def params_of(src: str, event: str) -> list[tuple[str, str]]:
    match = re.search(rf"global {event}: event\((.*?)\);", src, re.S)
    assert match, f"event {event} not declared"
    params = " ".join(match.group(1).split())
    return [tuple(p.split(": ", 1)) for p in params.split(", ")]


def test_feature_event_signature_matches_messages(main_zeek):
    assert FEATURES_EVENT == "SeqWatch::interval_features"
    assert "module SeqWatch;" in main_zeek
    assert params_of(main_zeek, "interval_features") == list(
        zip(
            FEATURE_ARGS,
            [
                "string",
                "time",
                "interval",
                "string",
                "count",
                "count",
                "count",
                "count",
                "vector of addr",
                "vector of vector of double",
            ],
            strict=True,
        )
    )


def test_verdict_record_matches_messages(main_zeek):
    assert VERDICT_EVENT == "SeqWatch::verdict"
    assert params_of(main_zeek, "verdict") == [("v", "Verdict")]
    assert fields_of(main_zeek, "Verdict") == list(
        zip(
            VERDICT_FIELDS,
            [
                "addr",
                "time",
                "interval",
                "double",
                "double",
                "string",
                "vector of string",
                "vector of double",
            ],
            strict=True,
        )
    )
    assert "event SeqWatch::verdict(v: Verdict)" in main_zeek


def test_topics_and_schema(main_zeek):
    assert declared(main_zeek, "features_topic") == f'"{FEATURES_TOPIC}"'
    assert declared(main_zeek, "verdicts_topic") == f'"{VERDICTS_TOPIC}"'
    assert declared(main_zeek, "schema_id") == f'"{SCHEMA_ID}"'


def test_defaults_match_the_python_side(main_zeek):
    assert interval_seconds(declared(main_zeek, "interval_width")) == DEFAULT_INTERVAL
    assert int(declared(main_zeek, "distinct_cap")) == DEFAULT_DISTINCT_CAP
    assert interval_seconds(declared(main_zeek, "slack")) == DEFAULT_SLACK
    delays = {
        "tcp_attempt": "tcp_attempt_delay",
        "tcp_close": "tcp_close_delay",
        "tcp_inactivity": "tcp_inactivity_delay",
        "long_inactivity": "long_inactivity_delay",
        "dns": "dns_delay",
        "udp_inactivity": "udp_inactivity_delay",
        "icmp_inactivity": "icmp_inactivity_delay",
    }
    assert set(delays) == set(RemovalDelays().as_dict())
    for field, option in delays.items():
        assert interval_seconds(declared(main_zeek, option)) == getattr(RemovalDelays(), field)
    services = set(re.findall(r'"([^"]+)"', declared(main_zeek, "long_timeout_services")))
    assert services == LONG_TIMEOUT_SERVICES
    ports = tuple(
        int(p) for p in re.findall(r"(\d+)/tcp", declared(main_zeek, "long_timeout_ports"))
    )
    assert ports == LONG_TIMEOUT_PORTS


def module_set(src: str, name: str) -> set[str]:
    match = re.search(rf"^const {name}: set\[string\] = \{{(.*?)\}};", src, re.M | re.S)
    assert match, f"{name} not found"
    return set(re.findall(r'"([^"]+)"', match.group(1)))


def test_state_sets_match_the_python_side(main_zeek):
    assert module_set(main_zeek, "failed_states") == FAILED_STATES
    assert module_set(main_zeek, "closed_states") == CLOSED_STATES


def test_reference_mirror_uses_the_scripts_defaults(main_zeek):
    settings = Settings()
    assert interval_seconds(declared(main_zeek, "check_interval")) == settings.check_interval
    assert int(declared(main_zeek, "max_hosts_per_interval")) == settings.max_hosts_per_interval
    assert int(declared(main_zeek, "hosts_per_message")) == settings.hosts_per_message
    assert declared(main_zeek, "track_hosts") == "ALL_HOSTS"


def test_feature_log_has_one_column_per_feature(main_zeek):
    columns = fields_of(main_zeek, "Info")
    assert [name for name, _ in columns] == [
        "start",
        "width",
        "host",
        *FEATURE_NAMES,
        "late",
        "node",
    ]
    log_decl = re.search(r"type Info: record \{\n(.*?)\n\t\};", main_zeek, re.S).group(1)
    assert log_decl.count("&log") == len(columns)
    assert "redef enum Log::ID += { LOG };" in main_zeek
    assert '$path="seqwatch_features"' in main_zeek
    assert "$policy=log_policy" in main_zeek


def test_notice_type(main_zeek):
    assert re.search(r"redef enum Notice::Type \+= \{.*?\bTraffic_Anomaly,", main_zeek, re.S)
    assert "$suppress_for=notice_suppression" in main_zeek
    assert "$identifier=cat(v$host)" in main_zeek


def test_zkg_meta(repo_root):
    meta = configparser.ConfigParser()
    assert meta.read(repo_root / "zkg.meta")
    package = meta["package"]
    assert package["script_dir"] == "zeek_scripts"
    assert (repo_root / package["script_dir"] / "__load__.zeek").exists()
    assert "zeek >=7.0.0" in package["depends"].split("\n")
    assert package["description"] and package["tags"] and package["test_command"]
    with open(repo_root / "pyproject.toml", "rb") as f:
        assert package["version"] == tomllib.load(f)["project"]["version"]
