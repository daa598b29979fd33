"""The report's words: the headline (which run was the most faithful and the sharpest, and by
how much) and what went wrong, run by run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from aelab.evaluate import Evaluation
from aelab.report.table import Row

# --- the headline: which run was the most faithful and the sharpest, and by how much


def _ratio_text(better: float, worse: float) -> str:
    if better <= 0 or not math.isfinite(worse):
        return ""
    ratio = worse / better
    return f"{ratio:.1f}× lower" if ratio >= 1.5 else f"{(1 - better / worse):.0%} lower"


def _one_run(row: Row) -> dict[str, str]:
    """A single run's card: its numbers, with nothing to be best against."""
    text = (
        f"validation MSE {row.metric('mse'):.4f}, SSIM {row.metric('ssim'):.3f}, PSNR {row.metric('psnr'):.1f} dB, "
        f"sharpness {row.metric('sharpness'):.2f}, blob score {row.metric('blob_score'):.2f}."
    )
    if not row.ranked:
        text += f" It {'collapsed' if row.collapsed else 'is ' + row.unranked_reason}: see what went wrong below."
    return {"title": f"One run: {row.label}", "text": text, "kind": "neutral" if row.ranked else "bad"}


def headline(rows: Sequence[Row]) -> list[dict[str, str]]:
    """Plain-words findings of the comparison: most faithful (lowest MSE, with SSIM), sharpest
    (sharpness nearest 1), and the per-loss best when the grid varies the loss, all among the
    ranked runs (finished, not collapsed). A single run gets a neutral summary instead."""
    usable = [row for row in rows if math.isfinite(row.metric("mse"))]
    if not usable:
        return [{"title": "No run could be evaluated", "text": "See the failures below.", "kind": "bad"}]
    if len(rows) == 1:
        return [_one_run(rows[0])]
    ranked = [row for row in usable if row.ranked]
    left_out = [f"{row.label} ({row.unranked_reason})" for row in rows if not row.ranked]
    if not ranked:
        return [
            {
                "title": "No run to recommend",
                "text": f"Every run collapsed or did not finish: {', '.join(left_out)}. See what went wrong below.",
                "kind": "bad",
            }
        ]
    items = []
    by_mse = sorted(ranked, key=lambda row: row.metric("mse"))
    best = by_mse[0]
    text = (
        f"validation MSE {best.metric('mse'):.4f}, SSIM {best.metric('ssim'):.3f}, PSNR {best.metric('psnr'):.1f} dB."
    )
    if len(by_mse) > 1:
        second, worst = by_mse[1], by_mse[-1]
        text += (
            f" That is {_ratio_text(best.metric('mse'), second.metric('mse'))} than the runner-up, {second.label} "
            f"({second.metric('mse'):.4f}), and {_ratio_text(best.metric('mse'), worst.metric('mse'))} than the "
            f"least faithful, {worst.label} ({worst.metric('mse'):.4f})."
        )
    if left_out:
        text += f" Not ranked: {', '.join(left_out)}."
    items.append({"title": f"Most faithful: {best.label}", "text": text})

    sharp = [row for row in ranked if math.isfinite(row.metric("sharpness"))]
    if len(sharp) > 1:
        by_sharp = sorted(sharp, key=lambda row: abs(row.metric("sharpness") - 1))
        top = by_sharp[0]
        blurriest = min(sharp, key=lambda row: row.metric("sharpness"))
        runner = by_sharp[1]
        text = (
            f"its reconstructions keep {top.metric('sharpness'):.0%} of the originals' edge energy "
            f"(sharpness {top.metric('sharpness'):.2f}; 1 = as crisp as the data), against "
            f"{runner.metric('sharpness'):.0%} for the runner-up, {runner.label}, and "
            f"{blurriest.metric('sharpness'):.0%} for the blurriest, {blurriest.label}."
        )
        if top is not best:
            # Crisp edges in the wrong places are not faithfulness: say what the sharp run costs.
            text += (
                f" Crisp is not the same as right: its validation MSE is {top.metric('mse'):.4f}, "
                f"{top.metric('mse') / best.metric('mse'):.1f}× that of the most faithful run, and its SSIM "
                f"{top.metric('ssim'):.3f} against {best.metric('ssim'):.3f}."
            )
        items.append({"title": f"Sharpest: {top.label}", "text": text})

    losses = {}
    for row in ranked:
        config = row.members[0].config
        if config is not None:
            losses.setdefault(config.train.loss, []).append(row)
    if len(losses) > 1:
        parts = []
        by_loss = sorted(losses.items(), key=lambda item: min(r.metric("mse") for r in item[1]))
        lowest = min(r.metric("mse") for r in by_loss[0][1])
        for place, (loss, loss_rows) in enumerate(by_loss, start=1):
            top = min(loss_rows, key=lambda row: row.metric("mse"))
            ratio = top.metric("mse") / lowest if lowest > 0 else math.nan
            relative = "" if place == 1 else (f", {ratio:.1f}× the best" if ratio >= 1.5 else f", +{ratio - 1:.0%}")
            parts.append(
                f"{loss}: MSE {top.metric('mse'):.4f}{relative}, sharpness {top.metric('sharpness'):.2f} ({top.label})"
            )
        items.append({"title": "Losses ranked by their best run's MSE", "text": "", "lines": parts})
    return items


def failures(evaluations: Sequence[Evaluation], labels: Sequence[str]) -> list[dict[str, Any]]:
    """Each run that went wrong, in words: collapse, dimming, unfinished, and the diagnostics'
    error and warning findings."""
    out = []
    for evaluation, label in zip(evaluations, labels, strict=True):
        lines = evaluation.problems()
        lines += [f"{f.severity}: {f.title}" for f in evaluation.findings if f.severity in ("error", "warning")]
        if lines:
            out.append({"label": label, "lines": lines, "severe": evaluation.collapsed or bool(evaluation.error)})
    return out
