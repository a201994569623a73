"""netcontrol.zeek: it parses, it is zeek-format clean, and it agrees with the Python side.

No Zeek binary is needed: zeekscript parses with Zeek's tree-sitter grammar. Whether Zeek
accepts the script semantically is for a test with a real Zeek (marker ``zeek``).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from seqwatch.sidecar.messages import NETCONTROL_TOPIC
from seqwatch.sidecar.mitigation import netcontrol

zeekscript = pytest.importorskip("zeekscript")


@pytest.fixture(scope="module")
def script(repo_root: Path) -> Path:
    return repo_root / "zeek_scripts" / "netcontrol.zeek"


def parsed(source: Path | bytes):
    tree = zeekscript.Script(source if isinstance(source, Path) else io.BytesIO(source))
    assert tree.parse(), tree.get_error()
    assert not tree.has_error(), tree.get_error()
    return tree


def test_script_parses_and_is_formatted(script: Path) -> None:
    tree = parsed(script)
    out = io.BytesIO()
    tree.format(out)
    assert out.getvalue() == script.read_bytes(), "run zeek-format -i zeek_scripts/netcontrol.zeek"


def test_script_matches_the_python_bridge(script: Path) -> None:
    text = script.read_text()
    record = re.search(r"type NetControlRule: record \{(.*?)\};", text, re.S)
    assert record is not None
    fields = tuple(re.findall(r"^\s*(\w+):", record.group(1), re.M))
    assert fields == netcontrol.RULE_FIELDS
    assert f'netcontrol_topic = "{NETCONTROL_TOPIC}"' in text
    assert f'netcontrol_reply_topic = "{netcontrol.REPLY_TOPIC}"' in text
    assert not netcontrol.REPLY_TOPIC.startswith(NETCONTROL_TOPIC)
    for name in (
        netcontrol.ADD_RULE,
        netcontrol.REMOVE_RULE,
        netcontrol.RULE_ADDED,
        netcontrol.RULE_EXISTS,
        netcontrol.RULE_REMOVED,
        netcontrol.RULE_ERROR,
    ):
        short = name.removeprefix("SeqWatch::")
        assert re.search(rf"global {short}: event\(id: count, r: NetControlRule", text), name
    # Every answer is turned into NetControl's own event for netcontrol.log.
    for outcome in ("added", "exists", "removed", "error"):
        assert f"event NetControl::rule_{outcome}(" in text


def test_documented_zeek_snippets_parse(repo_root: Path) -> None:
    docs = (repo_root / "docs" / "mitigation.md").read_text()
    snippets = re.findall(r"```zeek\n(.*?)```", docs, re.S)
    assert len(snippets) >= 3
    for snippet in snippets:
        parsed(snippet.encode())
