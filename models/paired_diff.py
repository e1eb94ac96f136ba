#!/usr/bin/env python3
"""Paired difference of one method's IoU between two `alignsam eval` runs on the same images:
mean over images and the half-width of its 95% interval (Student's t), as `eval` itself reports
differences between methods of one run. For comparing two bundles (a per-dataset clicker against
the union clicker): each run's `per_image.csv`, and the method in each.

    python3 models/paired_diff.py out/eval/SOD-own/per_image.csv clicker out/eval/SOD/per_image.csv clicker

Plain Python, no third-party package.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path


def ious(path: Path, method: str) -> dict[str, float]:
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == method]
    if not rows:
        raise SystemExit(f"{path}: no rows for method {method!r}")
    return {r["id"]: float(r["iou"]) for r in rows}


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t (the same expansion as src/eval/evaluate.rs)."""
    small = [12.706, 4.303, 3.182, 2.776]
    if 1 <= df <= 4:
        return small[df - 1]
    z, v = 1.959963984540054, float(df)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v * v)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
    )


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    a = ious(Path(argv[0]), argv[1])
    b = ious(Path(argv[2]), argv[3])
    ids = sorted(set(a) & set(b))
    if len(ids) != len(a) or len(ids) != len(b):
        raise SystemExit(f"the runs cover different images ({len(a)} and {len(b)}, {len(ids)} shared)")
    d = [a[i] - b[i] for i in ids]
    n = len(d)
    mean = sum(d) / n
    half = float("nan") if n < 2 else t975(n - 1) * math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n)
    verdict = "excludes 0" if abs(mean) > half else "includes 0"
    print(f"{argv[1]} ({argv[0]}) minus {argv[3]} ({argv[2]}): mIoU {sum(a.values()) / n:.3f} - {sum(b.values()) / n:.3f} = {mean:+.3f} +/-{half:.3f} over {n} images ({verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
