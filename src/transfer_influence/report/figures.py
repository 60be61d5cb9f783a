"""The report's figures, drawn with matplotlib (Agg, no screen) and returned as PNG bytes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..estimation.significance import FLAG_LEVEL  # noqa: E402
from ..outputs import output_units  # noqa: E402

__all__ = ["class_bars", "class_heatmap", "pruning_accuracy"]

# Class names are user data: never let matplotlib read "$...$" in them as mathematics.
_STYLE = {"text.parse_math": False, "font.size": 9, "axes.spines.top": False,
          "axes.spines.right": False}  # fmt: skip
HELPFUL, HARMFUL = "#1b7837", "#b2182b"


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def class_bars(helpful: pd.DataFrame, harmful: pd.DataFrame, output: str, level: float) -> bytes:
    """Most helpful and least helpful groups as horizontal bars with intervals that hold for
    every group at once, as they must for groups picked at the ends."""
    _, unit = output_units(output)
    rows = pd.concat([helpful, harmful.iloc[::-1]], ignore_index=True)
    with plt.rc_context(_STYLE):
        height = 0.9 + 0.26 * len(rows)
        figure, axis = plt.subplots(figsize=(7.5, height))
        y = np.arange(len(rows))[::-1]
        values = rows["influence"].to_numpy()
        low = (rows["influence"] - rows["simultaneous_low"]).to_numpy()
        high = (rows["simultaneous_high"] - rows["influence"]).to_numpy()
        colours = [HELPFUL if v >= 0 else HARMFUL for v in values]
        axis.barh(y, values, color=colours, alpha=0.85, height=0.7)
        axis.errorbar(values, y, xerr=[low, high], fmt="none", ecolor="#333333", lw=1, capsize=2)
        flagged = rows["q_value"].to_numpy() <= FLAG_LEVEL if "q_value" in rows else None
        names = [
            f"{name} *" if flagged is not None and flagged[i] else str(name)
            for i, name in enumerate(rows["group"])
        ]
        axis.set_yticks(y, names)
        axis.axvline(0, color="#333333", lw=0.8)
        if len(helpful) and len(harmful):
            axis.axhline(y[len(helpful) - 1] - 0.5, color="#999999", lw=0.6, ls=":")
        axis.set_xlabel(
            f"influence on the target ({unit}), relative to the average class; "
            f"{level:.0%} intervals simultaneous over all classes; * q ≤ {FLAG_LEVEL:g}"
        )
        axis.set_title("Most helpful (top) and least helpful (bottom) source classes", loc="left")
        return _png(figure)


def class_heatmap(matrix: pd.DataFrame, output: str) -> bytes:
    """Source groups x target classes, diverging colours centred on zero. The colour scale ends
    at the 95th percentile of |influence| (larger values saturate), so that one extreme pair
    does not leave every other cell pale."""
    _, unit = output_units(output)
    values = matrix.to_numpy()
    finite = np.abs(values[np.isfinite(values)])
    bound = float(np.percentile(finite, 95)) if finite.size else 1.0
    bound = bound if bound > 0 else 1.0
    with plt.rc_context(_STYLE):
        width = 2.5 + 0.42 * matrix.shape[1]
        figure, axis = plt.subplots(figsize=(min(width, 16), 1.0 + 0.2 * matrix.shape[0]))
        image = axis.imshow(values, cmap="PiYG", vmin=-bound, vmax=bound, aspect="auto")
        axis.set_yticks(range(matrix.shape[0]), [str(n) for n in matrix.index])
        # Target classes on top, where a reader starts; rows are grouped by the target class
        # each helps most, with a line between groups.
        axis.xaxis.tick_top()
        axis.set_xticks(
            range(matrix.shape[1]), [str(n) for n in matrix.columns], rotation=45, ha="left"
        )
        axis.tick_params(length=0)
        helped = np.nanargmax(np.where(np.isfinite(values), values, -np.inf), axis=1)
        for row in np.flatnonzero(np.diff(helped) != 0):
            axis.axhline(row + 0.5, color="#555555", lw=0.8)
        for side in axis.spines.values():
            side.set_visible(False)
        bar = figure.colorbar(image, ax=axis, fraction=0.04, pad=0.02)
        bar.set_label(f"influence ({unit}); beyond ±{bound:.2g}: saturated")
        axis.set_title(
            "Influence of source classes (rows) on target classes (columns)", loc="left", pad=60
        )
        return _png(figure)


def pruning_accuracy(summary: pd.DataFrame) -> bytes:
    """Test accuracy against groups removed, per rule, with the full source as a band (the
    style of the paper's Figure 2a)."""
    colours = {"bottom": HELPFUL, "top": HARMFUL, "random": "#666666"}
    with plt.rc_context(_STYLE):
        figure, axis = plt.subplots(figsize=(6.5, 3.8))
        full = summary[summary["condition"] == "full"]
        if not full.empty:
            row = full.iloc[0]
            low, high = row.test_ci_low, row.test_ci_high
            if not np.isfinite(low):
                low = high = row.test_mean
            axis.axhspan(100 * low, 100 * high, color="#9ecae1", alpha=0.5, lw=0)
            axis.axhline(100 * row.test_mean, color="#3182bd", lw=1.2, label="full source")
        for condition, rows in summary[summary["condition"] != "full"].groupby("condition"):
            rows = rows.sort_values("k")
            low = np.nan_to_num(rows.test_mean - rows.test_ci_low)
            high = np.nan_to_num(rows.test_ci_high - rows.test_mean)
            axis.errorbar(
                rows.k, 100 * rows.test_mean, yerr=[100 * low, 100 * high],
                marker="o", ms=4, capsize=3, lw=1.2,
                color=colours.get(condition, "#7b3294"),
                label=f"remove {condition}" if condition in colours else str(condition),
            )  # fmt: skip
        axis.set_xticks(sorted(set(summary.loc[summary["condition"] != "full", "k"])))
        axis.set_xlabel("source classes removed (k)")
        axis.set_ylabel("target test accuracy (%)")
        axis.set_title("Pretraining without chosen source classes (95% CIs, seeds)", loc="left")
        axis.legend(frameon=False, fontsize=8)
        return _png(figure)
