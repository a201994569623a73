"""Configuration: TOML + environment + flags, validation messages, run --check, packaging."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from onnx_fixture import write_model

from seqwatch.sidecar.cli import main
from seqwatch.sidecar.config import SCHEMA, ConfigError, env_name, load_config
from seqwatch.sidecar.mitigation.config import Mode

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "seqwatch.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file():
    config = load_config(None, env={})
    assert config.zeek.url == "ws://127.0.0.1:27759/v1/messages/json"
    assert config.zeek.topics == ("/seqwatch/features",)
    assert config.model.path is None and config.model.workers == 0
    assert config.policy.k_of_n == (1, 1) and config.policy.warmup is None
    assert config.buffers.max_hosts == 1_000_000
    assert config.notices.format == "tsv" and config.notices.fsync == "always"
    assert config.metrics.port is None
    assert config.tail.slack == 5.0
    assert config.mitigation is None
    assert set(config.sources.values()) == {"default"}


def test_the_packaged_example_is_valid_and_documents_every_key():
    example = REPO / "packaging" / "seqwatch.toml"
    config = load_config(example, env={})
    assert config.model.path == Path("/var/lib/seqwatch/model.onnx")
    assert config.mitigation is not None and config.mitigation.mode is Mode.OFF
    text = example.read_text()
    for section, keys in SCHEMA.items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"{key} =" in text, f"{section}.{key} is not documented in the example"


def test_file_then_environment_then_flags(tmp_path):
    path = write(
        tmp_path,
        """
[model]
path = "/from/file.onnx"
workers = 2
batch_size = 512
[policy]
k_of_n = [2, 3]
""",
    )
    env = {
        "SEQWATCH_MODEL_WORKERS": "4",
        "SEQWATCH_MODEL": "/from/alias.onnx",
        "SEQWATCH_POLICY_K_OF_N": "3/5",
        "SEQWATCH_ZEEK_TOPICS": "/seqwatch/features, /seqwatch/netcontrol",
        "SEQWATCH_ZEEK_TLS_VERIFY": "no",
        "SEQWATCH_UNRELATED": "ignored",
    }
    config = load_config(path, env=env, overrides={"model.batch_size": 64, "zeek.url": None})
    assert config.model.path == Path("/from/alias.onnx")
    assert config.model.workers == 4
    assert config.model.batch_size == 64
    assert config.policy.k_of_n == (3, 5)
    assert config.zeek.topics == ("/seqwatch/features", "/seqwatch/netcontrol")
    assert config.zeek.tls_verify is False
    assert config.zeek.url.startswith("ws://127.0.0.1")  # a None flag is "not given"
    assert config.sources["model.workers"] == "SEQWATCH_MODEL_WORKERS"
    assert config.sources["model.batch_size"] == "command line"
    assert config.sources["policy.cooldown"] == "default"
    k, n = config.policy.k_of_n
    policy = config.policy_config()
    assert (policy.k, policy.n) == (k, n)


def test_the_long_environment_name_beats_the_alias():
    env = {"SEQWATCH_MODEL": "/alias.onnx", "SEQWATCH_MODEL_PATH": "/long.onnx"}
    assert load_config(None, env=env).model.path == Path("/long.onnx")
    assert env_name("notices.max_pending") == "SEQWATCH_NOTICES_MAX_PENDING"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[modle]\npath = 'x'", {}, r"unknown section\(s\) \[modle\]"),
        ("[model]\npaht = 'x'", {}, r"model\.paht: unknown key in .*known in \[model\]: path"),
        ("[model]\nbatch_size = 0", {}, r"model\.batch_size: expected an integer in \[1, "),
        ("[model]\nworkers = 'two'", {}, r"model\.workers: expected an integer, got 'two'"),
        (
            "",
            {"SEQWATCH_MODEL_WORKERS": "two"},
            r"model\.workers: .*\(from SEQWATCH_MODEL_WORKERS\)",
        ),
        ("[zeek]\nurl = 'http://zeek'", {}, r"zeek\.url: expected a ws:// or wss:// URL"),
        ("[zeek]\nreconnect_min = 10\nreconnect_max = 1", {}, r"zeek\.reconnect_min: 10 s exceeds"),
        ("[zeek]\ntls_cert = '/c.pem'", {}, r"zeek\.tls_cert and zeek\.tls_key"),
        ("[zeek]\ntopics = []", {}, r"zeek\.topics: expected a non-empty list"),
        ("[policy]\nk_of_n = [3, 2]", {}, r"policy\.k_of_n: expected 1 <= k <= n"),
        ("[policy]\nthreshold = -1", {}, r"policy\.threshold: expected a number > 0"),
        ("[notices]\nformat = 'xml'", {}, r"notices\.format: expected one of tsv, json"),
        ("[tail]\nstart = 'middle'", {}, r"tail\.start: expected one of beginning, end"),
        ("[metrics]\nport = 70000", {}, r"metrics\.port: expected an integer in \[0, 65535\]"),
        ("[mitigation]\nmode = 'enforce'", {}, r"mitigation\.audit_log: required"),
        ("[mitigation]\nttll = 5", {}, r"\[mitigation\] unknown key\(s\) in \[mitigation\]: ttll"),
        ("[model\npath = 'x'", {}, r"invalid TOML"),
    ],
)
def test_errors_name_the_key_and_the_source(tmp_path, text, env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), env=env)


def test_a_missing_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


def test_mitigation_table_is_passed_through(tmp_path):
    path = write(
        tmp_path,
        "[mitigation]\nmode = 'dry-run'\nttl = '5m'\nallowlist = ['10.0.0.0/8']\n",
    )
    mitigation = load_config(path, env={}).mitigation
    assert mitigation.mode is Mode.DRY_RUN and mitigation.ttl == 300
    assert [str(n) for n in mitigation.allowlist] == ["10.0.0.0/8"]


# -- seqwatch run --check ---------------------------------------------------------------------
@pytest.fixture
def good_config(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("SEQWATCH_"):
            monkeypatch.delenv(name)
    model = write_model(tmp_path / "model.onnx", window=4)
    path = write(
        tmp_path,
        f"""
[model]
path = "{model}"
[notices]
path = "{tmp_path / "logs" / "notice.log"}"
""",
    )
    return path


def test_check_accepts_a_good_config(good_config, capsys):
    assert main(["run", "--config", str(good_config), "--check"]) == 0
    out = capsys.readouterr().out
    assert "model: " in out and "ok (id " in out
    assert out.strip().endswith("configuration ok")


def test_check_refuses_a_corrupt_model(good_config, tmp_path, capsys):
    (tmp_path / "model.onnx").write_bytes(b"not a model at all")
    assert main(["run", "--config", str(good_config), "--check"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("seqwatch run: error: ")
    assert "model.onnx: not a loadable ONNX model" in err


def test_check_refuses_a_bad_value_from_a_flag(good_config, capsys):
    assert main(["run", "--config", str(good_config), "--check", "--workers", "-1"]) == 1
    assert "model.workers: expected an integer in [0, 1024], got -1 (from command line)" in (
        capsys.readouterr().err
    )


def test_check_names_a_missing_model_setting(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SEQWATCH_MODEL", raising=False)
    monkeypatch.delenv("SEQWATCH_MODEL_PATH", raising=False)
    assert main(["run", "--config", str(write(tmp_path, "")), "--check"]) == 1
    assert "no model: set [model] path" in capsys.readouterr().err


def test_systemd_unit_confines_the_service():
    unit = (REPO / "packaging" / "seqwatch.service").read_text()
    settings = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    assert settings["User"] == ["seqwatch"]
    assert settings["AmbientCapabilities"] == ["CAP_NET_ADMIN"]
    assert settings["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["ReadWritePaths"] == ["/var/lib/seqwatch /var/log/seqwatch"]
    assert settings["NoNewPrivileges"] == ["yes"] and settings["PrivateTmp"] == ["yes"]
    assert "AF_NETLINK" in settings["RestrictAddressFamilies"][0].split()
    assert settings["Restart"] == ["on-failure"]
