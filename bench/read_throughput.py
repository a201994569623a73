"""Quick throughput check of the conn.log readers (not a test): prints rows per second.

Builds an in-memory conn.log from the real lab2 capture repeated N times (one header, the
data lines N times; addresses and times unchanged, so this measures parsing, not the
address table growth), then feeds it to ConnLogParser in 1 MiB pieces, as the file loop
does. Also reads the same bytes gzip-compressed from a temporary file through
read_connections, and a Zeek JSON rendering of it.

    python bench/read_throughput.py [--copies 40] [--repeat 3]

CPU time (process_time) is reported beside wall time: on a shared machine it is the
fairer number for "one core".
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

from seqwatch.sidecar.archives import read_connections
from seqwatch.sidecar.zeeklog import ConnLogParser

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "lab2" / "conn.log"
PIECE = 1 << 20
NUMERIC_TYPES = {"time", "interval", "port", "count", "double", "int"}


def build(source: Path, copies: int) -> tuple[bytes, int]:
    header, body = [], []
    for line in source.read_bytes().splitlines():
        if line.startswith(b"#"):
            if not line.startswith(b"#close"):
                header.append(line)
        elif line:
            body.append(line)
    data = b"\n".join(header) + b"\n" + (b"\n".join(body) + b"\n") * copies
    return data, len(body) * copies


def as_json(tsv: bytes) -> bytes:
    lines = tsv.splitlines()
    fields = next(line for line in lines if line.startswith(b"#fields")).decode().split("\t")[1:]
    types = next(line for line in lines if line.startswith(b"#types")).decode().split("\t")[1:]
    numeric = {f for f, t in zip(fields, types, strict=True) if t in NUMERIC_TYPES}
    out = []
    for line in lines:
        if line.startswith(b"#"):
            continue
        record = {}
        for name, value in zip(fields, line.decode().split("\t"), strict=True):
            if value == "-":
                continue
            record[name] = float(value) if name in numeric else value
        out.append(json.dumps(record))
    return ("\n".join(out) + "\n").encode()


def feed_all(data: bytes) -> int:
    parser = ConnLogParser("bench")
    rows = 0
    for start in range(0, len(data), PIECE):
        rows += sum(len(c) for c in parser.feed(data[start : start + PIECE]))
    return rows + sum(len(c) for c in parser.close())


def measure(label: str, rows: int, run, repeat: int) -> None:
    best_cpu = best_wall = float("inf")
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        got = run()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        if got != rows:
            raise SystemExit(f"{label}: read {got} rows, expected {rows}")
    print(
        f"{label:<28} {rows:>9,} rows  {rows / best_cpu:>12,.0f} rows/s CPU  "
        f"{rows / best_wall:>12,.0f} rows/s wall"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--copies", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    data, rows = build(args.source, args.copies)
    measure("TSV, parser fed 1 MiB", rows, lambda: feed_all(data), args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conn.log.gz"
        path.write_bytes(gzip.compress(data, compresslevel=6))
        measure(
            "TSV gzip, read_connections",
            rows,
            lambda: sum(len(c) for c in read_connections(path)),
            args.repeat,
        )
    small, small_rows = build(args.source, max(1, args.copies // 10))
    json_data = as_json(small)
    measure("Zeek JSON, parser fed 1 MiB", small_rows, lambda: feed_all(json_data), args.repeat)


if __name__ == "__main__":
    main()
