"""Run tracking: metrics as JSONL (one row per logging step) and a PNG plot of the curves."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_bytes, atomic_write_text


class JsonlLog:
    """Append-only JSONL file of metric rows; ``truncate_after(step)`` supports resuming."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def rows(self) -> list[dict[str, Any]]:
        """All complete rows (a torn last line from a killed run is ignored)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return out

    def append(self, row: dict[str, Any]) -> None:
        """Write one row and flush it to disk."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row, allow_nan=True) + "\n")
            fh.flush()

    def truncate_after(self, step: int) -> None:
        """Keep only rows with ``step <= step`` (atomically), dropping rows logged after a checkpoint."""
        rows = [r for r in self.rows() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))


def plot_curves(
    train_rows: list[dict], eval_rows: list[dict], path: str | os.PathLike, title: str = ""
) -> Path:
    """Draw loss, accuracy and learning-rate curves into a PNG (matplotlib Agg), atomically.

    Every evaluation row is a marker on the eval curves (top-5 only where the rows report it).
    """
    import io

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    counts = sorted({r["count"] for r in eval_rows if r.get("count")})
    # periodic evaluations on an eval_limit subset: say so, the curve mixes two sample sizes
    if len(counts) > 1:
        note = f"evaluations between the first and the last on {counts[0]} of the {counts[-1]} eval images"
        title = f"{title}  ({note})" if title else note

    def series(rows: list[dict], key: str) -> tuple[list, list]:
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        return [p[0] for p in pts], [p[1] for p in pts]

    ax = axes[0]
    ax.plot(*series(train_rows, "loss"), label="train loss")
    ax.plot(*series(eval_rows, "loss"), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_title("loss")
    ax.legend()
    ax = axes[1]
    ax.plot(*series(train_rows, "acc"), label="train top-1 (batches)")
    ax.plot(*series(eval_rows, "top1"), "o-", label="eval top-1")
    if any("top5" in r for r in eval_rows):  # reported only for more than 5 classes
        ax.plot(*series(eval_rows, "top5"), "s--", label="eval top-5")
    ax.set_xlabel("step")
    ax.set_ylabel("%")
    ax.set_title("accuracy")
    ax.legend()
    ax = axes[2]
    ax.plot(*series(train_rows, "lr"))
    ax.set_xlabel("step")
    ax.set_title("learning rate")
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
