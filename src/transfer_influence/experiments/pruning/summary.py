"""Pruning results summarised: means with confidence intervals over seeds, paired differences
to the full source, k chosen on validation, and the files of RUN/prune/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import stdtrit

from ...files import csv_text, json_bytes, write_files

__all__ = ["headline", "summarise", "write_outputs"]


def _mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    values = np.asarray(values, dtype=float)
    mean = float(values.mean()) if values.size else float("nan")
    if values.size < 2:
        return mean, float("nan"), float("nan")
    half = stdtrit(values.size - 1, 0.5 + level / 2) * values.std(ddof=1) / np.sqrt(values.size)
    return mean, mean - half, mean + half


def summarise(results: pd.DataFrame) -> tuple[pd.DataFrame, int | None]:
    """Per (condition, k): accuracies with 95% CIs over seeds, and the paired difference to
    the full source with the same seed. Returns it and the k that removing the bottom groups
    does best at on validation (None without bottom results)."""
    if results.empty:
        return pd.DataFrame(), None
    full = results[results["condition"] == "full"].set_index("seed")
    rows = []
    for (condition, k), group in results.groupby(["condition", "k"], sort=False):
        row = {"condition": condition, "k": int(k), "seeds": len(group)}
        for split in ("validation", "test"):
            mean, low, high = _mean_ci(group[f"{split}_accuracy"])
            row.update({f"{split}_mean": mean, f"{split}_ci_low": low, f"{split}_ci_high": high})
            paired = group[group["seed"].isin(full.index)]
            difference = (
                paired[f"{split}_accuracy"].to_numpy()
                - full.loc[paired["seed"], f"{split}_accuracy"].to_numpy()
            )
            mean, low, high = _mean_ci(difference)
            prefix = f"{split}_vs_full"
            row.update({prefix: mean, f"{prefix}_low": low, f"{prefix}_high": high})
        rows.append(row)
    summary = pd.DataFrame(rows).sort_values(["condition", "k"], ignore_index=True)
    bottom = summary[summary["condition"] == "bottom"]
    chosen = None if bottom.empty else int(bottom.loc[bottom["validation_mean"].idxmax(), "k"])
    return summary, chosen


def _points(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{100 * value:+.2f}"


def headline(summary: pd.DataFrame, chosen: int | None) -> str:
    """One honest sentence about the result (test numbers, k chosen on validation)."""
    if summary.empty:
        return "No pruning results yet."
    full = summary[summary["condition"] == "full"].iloc[0]
    text = f"Full source: test accuracy {100 * full.test_mean:.2f}% ({int(full.seeds)} seeds)."
    if chosen is None:
        return text
    parts = [text, f"k = {chosen} was chosen on the validation split."]
    for condition in ("bottom", "random", "top"):
        row = summary[(summary["condition"] == condition) & (summary["k"] == chosen)]
        if row.empty:
            continue
        row = row.iloc[0]
        parts.append(
            f"Removing {condition} {chosen}: {100 * row.test_mean:.2f}% "
            f"({_points(row.test_vs_full)} points vs full, 95% CI "
            f"[{_points(row.test_vs_full_low)}, {_points(row.test_vs_full_high)}])."
        )
    return " ".join(parts)


def write_outputs(
    folder: Path,
    results: pd.DataFrame,
    summary: pd.DataFrame,
    chosen: int | None,
    keep_list: list[str] | None,
    figure: bytes | None,
) -> None:
    """results.csv, summary.csv, summary.json, accuracy.png and keep-bottom-kK.txt, written in
    full before any replaces its old version (they are made again from the model records by
    every prune, so one that a crash left out of step is set right by the next)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "results.csv": csv_text(results).encode(),
        "summary.csv": csv_text(summary).encode(),
    }
    if figure is not None:
        files["accuracy.png"] = figure
    keep_name = None
    if keep_list is not None:
        keep_name = f"keep-bottom-k{chosen}.txt"
        files[keep_name] = ("\n".join(keep_list) + "\n").encode()
    files["summary.json"] = json_bytes(
        {
            "headline": headline(summary, chosen),
            "chosen_k": chosen,
            "keep_list": keep_name,
            "conditions": summary.to_dict("records"),
        }
    )
    write_files(folder, files)
