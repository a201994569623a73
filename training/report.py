"""Write an evaluation to disk: ``results.json``, ``table.md`` and the figures.

The Markdown table has the paper's Table 1 columns (mean error, σ, θ, % flagged, TPR,
FPR) plus precision, F1, ROC-AUC and PR-AUC, followed by recall per detailed label, recall
per source host and the hosts behind the false alarms. Numbers come from ``results`` only,
so a table can be regenerated from a saved ``results.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from seqwatch.training import plots
from seqwatch.training.dataset import WindowSet


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    if abs(value) >= 1000 or (value != 0 and abs(value) < 10 ** -(digits - 1)):
        return f"{value:.{digits}g}"
    return f"{value:.{digits}f}"


def _pct(value) -> str:
    return "–" if value is None else f"{value:.2f} %"


def table_markdown(results: dict, title: str = "") -> str:
    """The report as Markdown (Table 1 and the breakdowns)."""
    data = results["data"]
    counts = data["counts"]
    lines = [f"## {title}" if title else "## Evaluation", ""]
    lines.append(
        f"Δ = {data['interval']:g} s, T = {data['window']} intervals; "
        f"{counts['windows']} test windows ({counts['positive']} positive, "
        f"{counts['negative']} negative, {counts['excluded']} excluded as Background/Unknown "
        f"or unlabelled: scored, in neither class)."
    )
    lines.append("")
    lines.append(
        "| source | first window | last window | windows | positive | negative | excluded |"
    )
    lines.append("|---|---|---|---:|---:|---:|---:|")
    for tag, s in data["sources"].items():
        lines.append(
            f"| {tag} | {s['first']} | {s['last']} | {s['windows']} | {s['positive']} "
            f"| {s['negative']} | {s['excluded']} |"
        )
    lines += ["", _main_table(results["detectors"]), ""]
    lines.append(
        "μ_E and σ_E are the mean and standard deviation of the detector's error on its own "
        "training windows, θ its threshold (μ_E + k·σ_E unless stated); mean E (benign/attack) "
        "is the mean error on the test windows of each class; % flagged is over all test "
        "windows; TPR, FPR, precision and F1 at θ; ROC-AUC and PR-AUC (average precision) "
        "rank the windows by error, independent of θ; recall per kind (mean) averages the "
        "recall of each attack kind (detailed label), kinds detected counts the kinds with "
        'at least one flagged window. "FP on victims" counts false alarms on hosts that were '
        "the target of an attack in the window."
    )
    lines += ["", _label_table(results["detectors"]), ""]
    lines += [_host_table(results["detectors"]), ""]
    lines += [_false_alarm_table(results["detectors"]), ""]
    per_source = [d for d in results["detectors"] if d.get("per_source")]
    if per_source:
        tags = list(per_source[0]["per_source"])
        for tag in tags:
            rows = [d | {"metrics": d["per_source"][tag]} for d in per_source]
            lines += [f"### {tag} only", "", _main_table(rows), ""]
    return "\n".join(lines).rstrip() + "\n"


def _main_table(detectors: list[dict]) -> str:
    head = (
        "| detector | μ_E | σ_E | θ | mean E benign | mean E attack | % flagged | TPR | FPR "
        "| precision | F1 | ROC-AUC | PR-AUC | recall per kind (mean) | kinds detected "
        "| TP | FP | FP on victims | FN |"
    )
    rows = [head, "|---|" + "---:|" * 18]
    for d in detectors:
        m = d["metrics"]
        rows.append(
            f"| {d['name']} | {_fmt(d['error_mean'])} | {_fmt(d['error_std'])} "
            f"| {_fmt(d['threshold'])} | {_fmt(m['mean_error_negative'])} "
            f"| {_fmt(m['mean_error_positive'])} | {_pct(m['flagged_pct'])} | {_fmt(m['tpr'])} "
            f"| {_fmt(m['fpr'], 4)} | {_fmt(m['precision'])} | {_fmt(m['f1'])} "
            f"| {_fmt(m['roc_auc'])} | {_fmt(m['pr_auc'])} | {_fmt(m['recall_macro'])} "
            f"| {m['kinds_detected']} of {m['kinds']} | {m['tp']} | {m['fp']} "
            f"| {m['fp_attacked']} | {m['fn']} |"
        )
    return "\n".join(rows)


def _breakdown(detectors: list[dict], key: str, what: str, header: str) -> str:
    groups: dict[str, int] = {}
    for d in detectors:
        for name, row in d["metrics"][key].items():
            groups[name] = max(groups.get(name, 0), row["positives"])
    if not groups:
        return f"No positive windows: no recall per {what}."
    names = [d["name"] for d in detectors]
    rows = [
        f"| {header} | positive windows | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    with_auc = any("roc_auc" in r for d in detectors for r in d["metrics"][key].values())
    for group, positives in groups.items():
        cells = []
        for d in detectors:
            row = d["metrics"][key].get(group)
            if row is None:
                cells.append("–")
            elif with_auc:
                cells.append(f"{row['recall']:.2f} ({_fmt(row.get('roc_auc'), 2)})")
            else:
                cells.append(f"{row['recall']:.2f}")
        rows.append(f"| {group} | {positives} | " + " | ".join(cells) + " |")
    note = " (in brackets: ROC-AUC of that kind against all negative windows)" if with_auc else ""
    return f"Recall at θ per {what}{note}:\n\n" + "\n".join(rows)


def _label_table(detectors: list[dict]) -> str:
    return _breakdown(detectors, "recall_by_label", "detailed label", "detailed label")


def _host_table(detectors: list[dict]) -> str:
    return _breakdown(
        detectors, "recall_by_host", "source host (the originator of the attack)", "host"
    )


def _false_alarm_table(detectors: list[dict]) -> str:
    hosts: dict[str, tuple[int, int]] = {}
    for d in detectors:
        for host, row in d["metrics"]["false_alarms_by_host"].items():
            most = max(hosts.get(host, (0, 0))[1], row["flagged"])
            hosts[host] = (row["negatives"], most)
    if not hosts:
        return "No false alarms."
    names = [d["name"] for d in detectors]
    rows = [
        "| host | negative windows | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for host, (negatives, _) in sorted(hosts.items(), key=lambda kv: (-kv[1][1], kv[0])):
        cells = []
        for d in detectors:
            row = d["metrics"]["false_alarms_by_host"].get(host)
            cells.append("·" if row is None else str(row["flagged"]))
        rows.append(f"| {host} | {negatives} | " + " | ".join(cells) + " |")
    return (
        "False alarms (flagged negative windows) of the hosts with most of them "
        "(· = not among that detector's top hosts):\n\n" + "\n".join(rows)
    )


def write(
    out_dir: str | Path,
    results: dict,
    scores: dict[str, np.ndarray],
    data: WindowSet,
    title: str = "",
    figures: bool = True,
) -> list[Path]:
    """Write results.json, table.md and (unless ``figures`` is false) the three PNGs:
    error_over_time.png, roc.png and pr.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    written.append(path)
    path = out / "table.md"
    path.write_text(table_markdown(results, title))
    written.append(path)
    if not figures:
        return written
    curves = [
        plots.Curve(d["name"], scores[d["name"]], d["threshold"]) for d in results["detectors"]
    ]
    suffix = f" — {title}" if title else ""
    written.append(
        plots.error_over_time(
            out / "error_over_time.png",
            curves,
            data.times,
            data.labels,
            data.sources,
            data.interval,
            title=f"Error per (host, interval) window{suffix}",
        )
    )
    written.append(plots.roc(out / "roc.png", curves, data.labels, title=f"ROC{suffix}"))
    written.append(
        plots.precision_recall(
            out / "pr.png", curves, data.labels, title=f"Precision-recall{suffix}"
        )
    )
    return written
