"""A reliability diagram from per-bin sums, without torch: evaluation (metabench/uncertainty.py)
pools its episodes' bins with it, ``metabench report`` a setting's seeds."""

from __future__ import annotations

from typing import Any


def reliability_from_sums(count: list[float], correct: list[float],
                          confidence: list[float]) -> dict[str, Any]:
    """The reliability diagram from per-bin sums of queries, correct ones and confidences:
    per bin its count, accuracy and mean confidence (None for an empty bin), and the ECE
    (sum over bins of |correct - confidence| over all queries; None without queries)."""
    total = sum(count)
    acc = [None if c == 0 else k / c for c, k in zip(count, correct, strict=True)]
    conf = [None if c == 0 else f / c for c, f in zip(count, confidence, strict=True)]
    gap = sum(abs(k - f) for c, k, f in zip(count, correct, confidence, strict=True) if c)
    return {"bins": len(count), "count": [int(c) for c in count], "accuracy": acc,
            "confidence": conf, "ece": gap / total if total else None}
