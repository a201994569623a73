"""The sidecar's configuration: a TOML file, environment variables and command-line flags.

Precedence, lowest first: built-in defaults < the TOML file < environment variables <
command-line flags. Every key can be set from the environment as
``SEQWATCH_<SECTION>_<KEY>`` in upper case (``SEQWATCH_ZEEK_URL``,
``SEQWATCH_MODEL_PATH``, ``SEQWATCH_NOTICES_FSYNC`` ...); a few keys also have the short
names in :data:`ENV_ALIASES` (``SEQWATCH_MODEL`` = ``model.path``, ``SEQWATCH_WORKERS`` =
``model.workers``). Environment values are text: numbers as usual, booleans as
``true/false/1/0/yes/no``, lists comma-separated, ``k_of_n`` as ``3/5``. The
``[mitigation]`` table is not mapped to the environment: its safety settings belong in a
reviewed file.

Validation fails with :class:`ConfigError` naming the key and where the bad value came
from, e.g. ``model.batch_size: expected an integer >= 1, got 0 (from SEQWATCH_MODEL_BATCH_SIZE)``.
``packaging/seqwatch.toml`` documents every key.
"""

from __future__ import annotations

import contextlib
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("/etc/seqwatch/seqwatch.toml")
DEFAULT_ZEEK_URL = "ws://127.0.0.1:27759/v1/messages/json"
# Same values as messages.FEATURES_TOPIC / VERDICTS_TOPIC (DESIGN.md's topic names); kept
# literal so that reading a config needs no codec import.
DEFAULT_FEATURES_TOPIC = "/seqwatch/features"
DEFAULT_VERDICTS_TOPIC = "/seqwatch/verdicts"

ENV_PREFIX = "SEQWATCH_"
ENV_ALIASES = {
    "SEQWATCH_MODEL": "model.path",
    "SEQWATCH_WORKERS": "model.workers",
    "SEQWATCH_THRESHOLD": "policy.threshold",
    "SEQWATCH_NOTICES": "notices.path",
    "SEQWATCH_TAIL": "tail.path",
    "SEQWATCH_METRICS_PORT": "metrics.port",
}
"""Short environment names; each also has its long ``SEQWATCH_<SECTION>_<KEY>`` form."""


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the value's source."""


# -- value parsers: (value, from_env) -> parsed; raise ValueError("expected ...") ------------
Parser = Callable[[Any, bool], Any]


def _int(minimum: int, maximum: int | None = None) -> Parser:
    def parse(value: Any, from_env: bool) -> int:
        if from_env and isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            raise ValueError(f"expected an integer {bound}, got {value!r}")
        return value

    return parse


def _float(minimum: float, *, strict: bool = False) -> Parser:
    def parse(value: Any, from_env: bool) -> float:
        if from_env and isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value.strip())
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        value = float(value)
        ok = math.isfinite(value) and (value > minimum if strict else value >= minimum)
        if not ok:
            raise ValueError(
                f"expected a number {'>' if strict else '>='} {minimum:g}, got {value!r}"
            )
        return value

    return parse


def _optional(parser: Parser) -> Parser:
    def parse(value: Any, from_env: bool) -> Any:
        if value is None or (from_env and isinstance(value, str) and value.strip() == ""):
            return None
        return parser(value, from_env)

    return parse


def _bool(value: Any, from_env: bool) -> bool:
    if from_env and isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _text(value: Any, from_env: bool) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value.strip()


def _path(value: Any, from_env: bool) -> Path:
    if isinstance(value, os.PathLike):  # from command-line flags
        value = os.fspath(value)
    return Path(_text(value, from_env)).expanduser()


def _choice(*choices: str) -> Parser:
    def parse(value: Any, from_env: bool) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return parse


def _topics(value: Any, from_env: bool) -> tuple[str, ...]:
    if from_env and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise ValueError(f"expected a non-empty list of topic prefixes, got {value!r}")
    for topic in value:
        if not isinstance(topic, str) or not topic.startswith("/"):
            raise ValueError(f"topics start with '/', got {topic!r}")
    return tuple(value)


def _topic(value: Any, from_env: bool) -> str:
    text = _text(value, from_env)
    if not text.startswith("/"):
        raise ValueError(f"topics start with '/', got {text!r}")
    return text


def _url(value: Any, from_env: bool) -> str:
    text = _text(value, from_env)
    if not text.startswith(("ws://", "wss://")):
        raise ValueError(f"expected a ws:// or wss:// URL, got {text!r}")
    return text


def _zmq_endpoint(value: Any, from_env: bool) -> str:
    text = _text(value, from_env)
    if not text.startswith(("tcp://", "ipc://")):
        raise ValueError(f"expected a tcp:// or ipc:// ZeroMQ endpoint, got {text!r}")
    return text


def _k_of_n(value: Any, from_env: bool) -> tuple[int, int]:
    if from_env and isinstance(value, str):
        parts = value.replace(",", "/").split("/")
        with contextlib.suppress(ValueError):
            value = [int(p) for p in parts]
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"expected [k, n] (two integers), got {value!r}")
    k, n = value
    if not 1 <= k <= n:
        raise ValueError(f"expected 1 <= k <= n, got k={k}, n={n}")
    return (k, n)


@dataclass(frozen=True)
class _Key:
    parse: Parser
    default: Any


# The whole schema: section -> key -> parser and default. Adding a key here adds its
# environment variable and its validation; document it in packaging/seqwatch.toml.
SCHEMA: dict[str, dict[str, _Key]] = {
    "zeek": {
        "url": _Key(_url, DEFAULT_ZEEK_URL),
        "topics": _Key(_topics, (DEFAULT_FEATURES_TOPIC,)),
        "verdict_topic": _Key(_topic, DEFAULT_VERDICTS_TOPIC),
        "tls_ca": _Key(_optional(_path), None),
        "tls_cert": _Key(_optional(_path), None),
        "tls_key": _Key(_optional(_path), None),
        "tls_verify": _Key(_bool, True),
        "reconnect_min": _Key(_float(0.0, strict=True), 1.0),
        "reconnect_max": _Key(_float(0.0, strict=True), 60.0),
    },
    "model": {
        "path": _Key(_optional(_path), None),
        "threads": _Key(_int(1, 256), 1),
        "batch_size": _Key(_int(1, 1 << 20), 4096),
        "workers": _Key(_int(0, 1024), 0),
        "worker_bind": _Key(_optional(_zmq_endpoint), None),
        "reload": _Key(_bool, True),
    },
    "policy": {
        "threshold": _Key(_optional(_float(0.0, strict=True)), None),
        "k_of_n": _Key(_k_of_n, (1, 1)),
        "cooldown": _Key(_int(0), 0),
        "warmup": _Key(_optional(_int(0)), None),
    },
    "buffers": {
        "max_hosts": _Key(_int(1), 1_000_000),
    },
    "notices": {
        "path": _Key(_optional(_path), Path("/var/log/seqwatch/notice.log")),
        "format": _Key(_choice("tsv", "json"), "tsv"),
        "fsync": _Key(_choice("always", "never"), "always"),
        "max_pending": _Key(_int(1), 10_000),
    },
    "metrics": {
        "listen": _Key(_text, "127.0.0.1"),
        "port": _Key(_optional(_int(0, 65535)), None),
    },
    "tail": {
        "path": _Key(_optional(_path), None),
        "format": _Key(_choice("auto", "zeek-tsv", "zeek-json", "eve"), "auto"),
        "start": _Key(_choice("beginning", "end"), "beginning"),
        "slack": _Key(_float(0.0), 5.0),
        "poll_interval": _Key(_float(0.0, strict=True), 1.0),
    },
}


@dataclass(frozen=True)
class ZeekSection:
    url: str
    topics: tuple[str, ...]
    verdict_topic: str
    tls_ca: Path | None
    tls_cert: Path | None
    tls_key: Path | None
    tls_verify: bool
    reconnect_min: float
    reconnect_max: float


@dataclass(frozen=True)
class ModelSection:
    path: Path | None
    threads: int
    batch_size: int
    workers: int
    worker_bind: str | None
    reload: bool


@dataclass(frozen=True)
class PolicySection:
    threshold: float | None
    k_of_n: tuple[int, int]
    cooldown: int
    warmup: int | None


@dataclass(frozen=True)
class BuffersSection:
    max_hosts: int


@dataclass(frozen=True)
class NoticesSection:
    path: Path | None
    format: str
    fsync: str
    max_pending: int


@dataclass(frozen=True)
class MetricsSection:
    listen: str
    port: int | None


@dataclass(frozen=True)
class TailSection:
    path: Path | None
    format: str
    start: str
    slack: float
    poll_interval: float


_SECTIONS = {
    "zeek": ZeekSection,
    "model": ModelSection,
    "policy": PolicySection,
    "buffers": BuffersSection,
    "notices": NoticesSection,
    "metrics": MetricsSection,
    "tail": TailSection,
}


@dataclass(frozen=True)
class Config:
    """The validated configuration; ``mitigation`` is None when the file has no such table."""

    zeek: ZeekSection
    model: ModelSection
    policy: PolicySection
    buffers: BuffersSection
    notices: NoticesSection
    metrics: MetricsSection
    tail: TailSection
    mitigation: Any = None  # seqwatch.sidecar.mitigation.config.MitigationConfig
    source: str = "<defaults>"
    sources: dict[str, str] = field(default_factory=dict)
    """Where each key's value came from (``"section.key"`` -> file/env/flag), for --check."""

    def policy_config(self):
        """The :class:`~seqwatch.sidecar.policy.PolicyConfig` of ``[policy]``."""
        from seqwatch.sidecar.policy import PolicyConfig

        k, n = self.policy.k_of_n
        return PolicyConfig(
            threshold=self.policy.threshold, k=k, n=n, cooldown=self.policy.cooldown
        )


def env_name(dotted: str) -> str:
    """``"model.batch_size"`` -> ``"SEQWATCH_MODEL_BATCH_SIZE"``."""
    return ENV_PREFIX + dotted.replace(".", "_").upper()


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read, merge and validate the configuration.

    ``path`` is the TOML file (None: defaults only). ``env`` defaults to ``os.environ``.
    ``overrides`` maps ``"section.key"`` to values from command-line flags (None values
    are ignored, so unset flags can be passed straight through).
    """
    env = os.environ if env is None else env
    document: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as handle:
                document = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None

    unknown = sorted(set(document) - set(SCHEMA) - {"mitigation"})
    if unknown:
        raise ConfigError(
            f"{source}: unknown section(s) {', '.join(f'[{s}]' for s in unknown)} "
            f"(known: {', '.join(f'[{s}]' for s in [*SCHEMA, 'mitigation'])})"
        )

    # Raw values with their origin; parsed once at the end so errors name the origin.
    raw: dict[str, tuple[Any, str, bool]] = {}
    for section, keys in SCHEMA.items():
        table = document.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        extra = sorted(set(table) - set(keys))
        if extra:
            raise ConfigError(
                f"{section}.{extra[0]}: unknown key in {source} "
                f"(known in [{section}]: {', '.join(keys)})"
            )
        for key, value in table.items():
            raw[f"{section}.{key}"] = (value, source, False)

    dotted_keys = {f"{s}.{k}" for s, keys in SCHEMA.items() for k in keys}
    for dotted in sorted(dotted_keys):
        name = env_name(dotted)
        if name in env:
            raw[dotted] = (env[name], name, True)
    for name, dotted in ENV_ALIASES.items():
        # The long form wins when both are set: it is the more specific one.
        if name in env and env_name(dotted) not in env:
            raw[dotted] = (env[name], name, True)
    for dotted, value in (overrides or {}).items():
        if dotted not in dotted_keys:
            raise ValueError(f"override for unknown key {dotted}")  # a programming error
        if value is not None:
            raw[dotted] = (value, "command line", False)

    sections: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for section, keys in SCHEMA.items():
        values = {}
        for key, spec in keys.items():
            dotted = f"{section}.{key}"
            if dotted in raw:
                value, origin, from_env = raw[dotted]
                try:
                    values[key] = spec.parse(value, from_env)
                except ValueError as exc:
                    raise ConfigError(f"{dotted}: {exc} (from {origin})") from None
                sources[dotted] = origin
            else:
                values[key] = spec.default
                sources[dotted] = "default"
        sections[section] = _SECTIONS[section](**values)

    zeek = sections["zeek"]
    if zeek.reconnect_min > zeek.reconnect_max:
        raise ConfigError(
            f"zeek.reconnect_min: {zeek.reconnect_min:g} s exceeds zeek.reconnect_max "
            f"{zeek.reconnect_max:g} s (from {sources['zeek.reconnect_min']})"
        )
    if (zeek.tls_cert is None) != (zeek.tls_key is None):
        raise ConfigError("zeek.tls_cert and zeek.tls_key must be given together")

    mitigation = None
    if "mitigation" in document:
        table = document["mitigation"]
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [mitigation] must be a table")
        from seqwatch.sidecar.mitigation.config import MitigationConfig

        try:
            mitigation = MitigationConfig.from_mapping(table)
        except ValueError as exc:
            # Its messages start with the key ("ttl: ...") when one key is at fault.
            text = str(exc)
            head = text.split(":", 1)[0]
            prefix = "mitigation." if head.isidentifier() else "[mitigation] "
            raise ConfigError(f"{prefix}{text} (from {source})") from None

    return Config(**sections, mitigation=mitigation, source=source, sources=sources)


def default_config_path(env: Mapping[str, str] | None = None) -> Path | None:
    """``SEQWATCH_CONFIG``, else /etc/seqwatch/seqwatch.toml when it exists, else None."""
    env = os.environ if env is None else env
    if env.get("SEQWATCH_CONFIG"):
        return Path(env["SEQWATCH_CONFIG"])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None
