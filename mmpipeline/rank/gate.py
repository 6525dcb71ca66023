"""The champion gate: a pure decision from challenger and champion metrics.

The challenger becomes champion when there is no champion, or when it beats the champion on the
primary metric by more than ``rank.promote_margin`` (strictly: a tie never promotes) and no slice
regresses by more than ``rank.slice_tolerance``. A version that already is the champion is never
"promoted" again. The stage (:mod:`mmpipeline.rank.evaluate`) records the decision and moves the alias.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from mmpipeline.config import RankConfig

SLICES = ("all", "short_queries", "long_queries", "no_image_products")


def decide(challenger: dict[str, dict[str, float]], champion: dict[str, dict[str, float]] | None,
           rc: "RankConfig") -> tuple[bool, list[str]]:
    """Promotion decision from slice -> metric -> value of challenger and champion."""
    pm = rc.primary_metric
    if champion is None:
        return True, ["no current champion: the first evaluated model becomes champion"]
    c_val, h_val = challenger["all"].get(pm, float("nan")), champion["all"].get(pm, float("nan"))
    reasons, ok = [], True
    if not np.isfinite(c_val):
        return False, [f"challenger {pm} is not finite ({c_val})"]
    if not np.isfinite(h_val) or c_val > h_val + rc.promote_margin:
        reasons.append(f"{pm}: challenger {c_val:.4f} > champion {h_val:.4f} + margin {rc.promote_margin}")
    else:
        ok = False
        reasons.append(f"{pm}: challenger {c_val:.4f} does not beat champion {h_val:.4f} by more than margin "
                       f"{rc.promote_margin}" + (" (a tie)" if c_val == h_val else ""))
    for slice_name in SLICES[1:]:
        c = challenger.get(slice_name, {}).get(pm, float("nan"))
        h = (champion.get(slice_name) or {}).get(pm, float("nan"))
        if not (np.isfinite(c) and np.isfinite(h)):
            continue
        if c < h - rc.slice_tolerance:
            ok = False
            reasons.append(f"slice {slice_name} regresses: {pm} {c:.4f} < champion {h:.4f} - tolerance {rc.slice_tolerance}")
        else:
            reasons.append(f"slice {slice_name} ok: {pm} {c:.4f} vs champion {h:.4f}")
    return ok, reasons


def gate_decision(challenger: dict[str, dict[str, float]], champion: dict[str, dict[str, float]] | None,
                  rc: "RankConfig", challenger_version: str, champion_version: str | None) -> tuple[bool, list[str]]:
    """:func:`decide`, except that a challenger which already is the champion is kept as it is."""
    if champion_version is not None and str(champion_version) == str(challenger_version):
        return False, [f"version {challenger_version} is already the champion"]
    return decide(challenger, champion, rc)
