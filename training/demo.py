"""``seqwatch demo``: the whole method on bundled real traffic, in about a minute.

1. Build windows from benign lab traffic shipped in ``training/data`` (the first 12.7
   minutes of the lab2 capture with the attack connections removed; PROVENANCE.txt).
2. Train a small recurrent model (GRU by default) on them and export the model file.
3. Replay the next 6.7 minutes of the same capture -- an HTTP flood, a normal client
   turning horizontal scanner, DNS exfiltration, a beacon -- through the sidecar's own
   replay path (:func:`seqwatch.sidecar.replay.replay_files`: archives -> features ->
   :class:`~seqwatch.sidecar.pipeline.Pipeline` -> verdicts), exactly as ``seqwatch
   replay`` and the live sidecar would score it.
4. Print the notices in Zeek's ``notice.log`` TSV format on stdout, and on stderr which
   flagged hosts the capture's own labels (``labels.tsv``) name as attackers.

Δ = 10 s and T = 16 (160 s of context): the lab ran for 33 minutes, so minute-wide
intervals would leave too few windows to learn from.
"""

from __future__ import annotations

import csv
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

DATA_DIR = Path(__file__).resolve().parent / "data"
TRAIN_FILE = "lab2-benign-train.conn.log.gz"
ATTACK_FILE = "lab2-attack-test.conn.log.gz"
LABELS_FILE = "lab2-labels.tsv"

INTERVAL = 10.0
WINDOW = 16
EPOCHS = 25
HIDDEN = 32
BATCH = 32


@dataclass
class Attack:
    """One row of lab2's labels.tsv."""

    attacker: str
    kind: str
    start: float
    end: float


@dataclass
class DemoResult:
    """What one demo run produced (for the CLI summary and the tests)."""

    verdicts: list
    model_path: Path
    notice_path: Path
    train_windows: int
    seconds: float
    attacks: list[Attack] = field(default_factory=list)

    def hosts(self) -> dict[str, int]:
        """Notices per flagged host, most first."""
        counts: dict[str, int] = {}
        for v in self.verdicts:
            counts[v.host] = counts.get(v.host, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def known_attacks(self, host: str) -> list[str]:
        """Kinds of labelled attacks by ``host`` (labels.tsv), whatever their time."""
        return sorted({a.kind for a in self.attacks if a.attacker == host})


def load_attacks(path: Path) -> list[Attack]:
    """The attack rows of a lab2 labels.tsv."""
    with open(path, newline="") as handle:
        return [
            Attack(row["attacker_ip"], row["kind"], float(row["start_ts"]), float(row["end_ts"]))
            for row in csv.DictReader(handle, delimiter="\t")
        ]


class _Steps:
    """Numbered progress lines on stderr with the time elapsed."""

    def __init__(self, out: TextIO, started: float):
        self.out, self.started, self.n = out, started, 0

    def __call__(self, text: str) -> None:
        self.n += 1
        elapsed = time.perf_counter() - self.started
        print(f"[demo {elapsed:5.1f}s] {self.n}. {text}", file=self.out, flush=True)


def run_demo(
    workdir: Path,
    *,
    arch: str = "gru",
    epochs: int = EPOCHS,
    seed: int = 0,
    progress: bool = True,
    log: TextIO | None = None,
) -> DemoResult:
    """Train on the bundled benign slice, replay the attack slice; return what happened.

    Progress lines go to ``log`` (default: the current ``sys.stderr``).
    """
    import numpy as np

    from seqwatch.sidecar.modelfile import OnnxModel
    from seqwatch.sidecar.notices import NoticeWriter
    from seqwatch.sidecar.pipeline import Pipeline
    from seqwatch.sidecar.replay import replay_files
    from seqwatch.sidecar.schema import FeatureConfig
    from seqwatch.training import dataset
    from seqwatch.training.detector import SequenceDetector

    started = time.perf_counter()
    step = _Steps(log or sys.stderr, started)
    workdir.mkdir(parents=True, exist_ok=True)
    train_path, attack_path = DATA_DIR / TRAIN_FILE, DATA_DIR / ATTACK_FILE

    step(f"reading benign traffic {train_path.name} (Δ={INTERVAL:g} s, T={WINDOW})")
    data = dataset.build(
        [train_path], config=FeatureConfig(INTERVAL), window=WINDOW, progress=progress
    )
    train = data.select(data.normal_mask())
    step(
        f"{len(train)} training windows of {np.unique(train.hosts).size} hosts; "
        f"training a {arch.upper()} ({epochs} epochs at most)"
    )
    detector = SequenceDetector(
        architecture=arch,
        window=WINDOW,
        hidden_size=HIDDEN,
        epochs=epochs,
        batch_size=BATCH,
        seed=seed,
        progress=progress,
    ).fit(train.windows, train.times)
    model_path = workdir / f"demo-{arch}.onnx"
    info = detector.export_onnx(
        model_path,
        {
            "interval": INTERVAL,
            "train_size": {
                "hosts": int(np.unique(train.hosts).size),
                "connections": data.stats[next(iter(data.stats))]["connections"],
            },
        },
    )
    step(
        f"model {model_path.name}: μ_E={info.error_mean:.3f} σ_E={info.error_std:.3f} "
        f"θ=μ_E+3σ_E={info.threshold:.3f} (id {info.model_id})"
    )

    step(
        f"replaying {attack_path.name} through the sidecar pipeline "
        f"(first {WINDOW} intervals only fill the windows)"
    )
    model = OnnxModel.load(model_path)
    pipeline = Pipeline(model, warmup=WINDOW)
    verdicts = list(replay_files([attack_path], pipeline))
    notice_path = workdir / "notice.log"
    writer = NoticeWriter(notice_path, fsync="never")
    writer.write(verdicts)
    writer.close()
    seconds = time.perf_counter() - started
    step(
        f"{len(verdicts)} notices from {pipeline.stats.host_intervals} scored windows "
        f"in {seconds:.1f} s -> {notice_path}"
    )
    return DemoResult(
        verdicts=verdicts,
        model_path=model_path,
        notice_path=notice_path,
        train_windows=len(train),
        seconds=seconds,
        attacks=load_attacks(DATA_DIR / LABELS_FILE),
    )


def print_notices(verdicts: Sequence, out: TextIO | None = None) -> None:
    """The verdicts as a Zeek notice.log (TSV with header and #close), default on stdout."""
    from seqwatch.sidecar.notices import notice_record, tsv_close, tsv_header, tsv_line

    out = out or sys.stdout
    first = min((v.start for v in verdicts), default=None)
    out.write(tsv_header(first))
    for v in verdicts:
        out.write(tsv_line(notice_record(v)) + "\n")
    out.write(tsv_close(max((v.start + v.width for v in verdicts), default=None)))


def print_summary(result: DemoResult, out: TextIO | None = None) -> None:
    """Flagged hosts with the attacks labels.tsv attributes to them (default on stderr)."""
    out = out or sys.stderr
    print("\nflagged hosts (labels.tsv says):", file=out)
    for host, count in result.hosts().items():
        times = [v.start for v in result.verdicts if v.host == host]
        span = " .. ".join(
            datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S") for t in (min(times), max(times))
        )
        kinds = result.known_attacks(host)
        truth = "attacker: " + ", ".join(kinds) if kinds else "not an attacker"
        print(f"  {host:<28} {count:3d} notice(s)  {span} UTC  {truth}", file=out)
    print(f"demo finished in {result.seconds:.1f} s", file=out)


def run(
    out: Path | None = None,
    arch: str = "gru",
    epochs: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> int:
    """The ``seqwatch demo`` command: notices on stdout, progress and summary on stderr."""
    with tempfile.TemporaryDirectory(prefix="seqwatch-demo-") as tmp:
        workdir = out or Path(tmp)
        result = run_demo(workdir, arch=arch, epochs=epochs or EPOCHS, seed=seed, progress=progress)
        print_notices(result.verdicts)
        print_summary(result)
        if out is None:
            print(
                "(model and notice.log were in a temporary directory; --out DIR keeps them)",
                file=sys.stderr,
            )
    return 0
