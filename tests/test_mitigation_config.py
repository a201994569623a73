"""The ``[mitigation]`` table: parsing, defaults and errors that name the key."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from seqwatch.sidecar.mitigation import (
    MitigationConfig,
    MitigationConfigError,
    Mode,
    Reconcile,
    load_config,
)


def test_defaults_are_off_and_safe() -> None:
    config = MitigationConfig()
    assert config.mode is Mode.OFF
    assert config.chains == ("INPUT", "FORWARD") and config.chain == "SEQWATCH"
    assert (config.set4, config.set6, config.families) == ("seqwatch4", "seqwatch6", (4, 6))
    assert (config.ttl, config.max_ttl, config.escalation) == (600, 86400, 2.0)
    assert config.reconcile is Reconcile.ADOPT and config.protect_host


def test_from_mapping_converts_every_kind_of_value(tmp_path: Path) -> None:
    config = MitigationConfig.from_mapping(
        {
            "mode": "enforce",
            "audit_log": str(tmp_path / "audit.jsonl"),
            "chains": ["FORWARD"],
            "directions": ["src", "dst"],
            "allowlist": ["10.1.2.3/24", "2001:db8::1"],
            "peers": ["192.0.2.5"],
            "ttl": "90s",
            "max_ttl": "1.5h",
            "offence_memory": "2d",
            "escalation": 3,
            "max_concurrent": 5,
            "max_per_minute": 2,
            "reconcile": "remove",
            "netns": "fw",
            "ip6": False,
        }
    )
    assert config.mode is Mode.ENFORCE and config.audit_log == tmp_path / "audit.jsonl"
    assert config.chains == ("FORWARD",) and config.directions == ("src", "dst")
    assert config.allowlist == (
        ipaddress.ip_network("10.1.2.0/24"),
        ipaddress.ip_network("2001:db8::1/128"),
    )
    assert (config.ttl, config.max_ttl, config.offence_memory) == (90, 5400, 172800)
    assert config.escalation == 3.0 and config.reconcile is Reconcile.REMOVE
    assert config.families == (4,) and config.netns == "fw"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"mdoe": "enforce"}, "unknown key(s) in [mitigation]: mdoe"),
        ({"mode": "block"}, "mode: 'block' is not one of off, dry-run, enforce"),
        ({"mode": "enforce"}, "audit_log: required when mode = 'enforce'"),
        ({"ttl": "ten minutes"}, "ttl: expected seconds or a duration"),
        ({"ttl": 0}, "ttl: must be positive"),
        ({"ttl": 7200, "max_ttl": 3600}, "need 1 <= ttl (7200) <= max_ttl (3600)"),
        ({"max_ttl": "30d"}, "<= 2147483 s"),
        ({"escalation": 0.5}, "escalation: 0.5 not in [1, 100]"),
        ({"max_concurrent": 0}, "max_concurrent: must be in [1, 65536]"),
        ({"max_per_minute": True}, "max_per_minute: expected an integer"),
        ({"chains": ["PREROUTING"]}, "chains: expected a non-empty list out of INPUT"),
        ({"directions": []}, "directions: expected a non-empty list"),
        ({"chain": "INPUT"}, "chain: 'INPUT' must be"),
        ({"chain": "has space"}, "chain: 'has space' must be"),
        ({"set4": "x" * 32}, "set4: "),
        ({"set6": "seqwatch4"}, "set4 and set6 must differ"),
        ({"allowlist": "10.0.0.0/8"}, "allowlist: expected a list"),
        ({"allowlist": ["10.0.0.0/33"]}, "allowlist: not an address or CIDR: '10.0.0.0/33'"),
        ({"peers": ["zeek.example"]}, "peers: not an address or CIDR: 'zeek.example'"),
        ({"reconcile": "keep"}, "reconcile: 'keep' is not 'adopt' or 'remove'"),
        ({"ip6": "yes"}, "ip6: expected true or false"),
        ({"netns": "a b"}, "netns: not a namespace name"),
    ],
)
def test_invalid_values_name_the_key(table: dict, message: str) -> None:
    with pytest.raises(MitigationConfigError, match=re.escape(message)):
        MitigationConfig.from_mapping(table)


def test_direct_construction_is_validated_too() -> None:
    config = MitigationConfig(mode="dry-run", allowlist=["10.0.0.0/8"], ttl="5m")
    assert config.mode is Mode.DRY_RUN and config.ttl == 300
    with pytest.raises(MitigationConfigError, match="mode: 'on'"):
        MitigationConfig(mode="on")


def test_load_config_reads_only_the_mitigation_table(tmp_path: Path) -> None:
    path = tmp_path / "seqwatch.toml"
    path.write_text('[zeek]\nurl = "ws://x"\n\n[mitigation]\nmode = "dry-run"\nttl = "2m"\n')
    config = load_config(path)
    assert config.mode is Mode.DRY_RUN and config.ttl == 120
    path.write_text('[zeek]\nurl = "ws://x"\n')
    assert load_config(path) == MitigationConfig()
    path.write_text("[mitigation\n")
    with pytest.raises(MitigationConfigError, match="invalid TOML"):
        load_config(path)
    with pytest.raises(MitigationConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_the_documented_example_is_valid(repo_root: Path, tmp_path: Path) -> None:
    docs = (repo_root / "docs" / "mitigation.md").read_text()
    [example] = [
        block
        for block in re.findall(r"```toml\n(.*?)```", docs, re.S)
        if block.startswith("[mitigation]")
    ]
    path = tmp_path / "example.toml"
    path.write_text(example)
    config = load_config(path)
    assert config.mode is Mode.ENFORCE and config.ttl == 600 and config.max_ttl == 86400
    # Every key of the dataclass is shown in the example (netns commented out).
    shown = set(re.findall(r"^#? ?(\w+) =", example, re.M))
    assert shown == set(MitigationConfig.__dataclass_fields__)
