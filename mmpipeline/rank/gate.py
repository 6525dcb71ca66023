"""The champion gate: a pure decision from challenger, champion and baseline metrics.

The challenger becomes champion when there is no champion, or when it beats the champion on the
primary metric by more than ``rank.promote_margin`` (strictly: a tie never promotes) and no gated
slice (``rank.gate_slices``) regresses against the champion by more than ``rank.slice_tolerance``.
With ``rank.slice_regression_max`` set, the challenger must also not trail any baseline (BM25, text
or image cosine: the systems the catalog can have) on any gated slice by more than that, also when
there is no champion yet. Independently, the challenger's overall primary metric must reach the best
baseline's plus ``rank.min_gain_over_baselines`` (default 0: not below BM25), the first model too.
Slices measured on fewer than ``rank.slice_min_queries`` queries are not gated (too noisy). A version
that already is the champion is never "promoted" again. The stage (:mod:`mmpipeline.rank.evaluate`)
records the decision and moves the alias.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from mmpipeline.config import RankConfig

SLICES = ("all", "short_queries", "long_queries", "no_image_products", "image_products")


def _gated(rc: "RankConfig") -> list[str]:
    return [s for s in SLICES[1:] if s in rc.gate_slices]


def _enough(ms: dict[str, float] | None, rc: "RankConfig") -> bool:
    return ms is not None and ("queries" not in ms or ms["queries"] >= rc.slice_min_queries)


def baseline_regressions(challenger: dict[str, dict[str, float]], baselines: dict[str, dict[str, dict[str, float]]],
                         rc: "RankConfig") -> tuple[bool, list[str]]:
    """Whether the challenger trails a baseline on a gated slice (or overall) by more than
    ``rank.slice_regression_max``; the reasons name each slice and baseline it checked."""
    if rc.slice_regression_max is None or not baselines:
        return True, []
    pm, ok, reasons = rc.primary_metric, True, []
    for slice_name in ["all", *_gated(rc)]:
        cm = challenger.get(slice_name)
        c = (cm or {}).get(pm, float("nan"))
        if not (_enough(cm, rc) and np.isfinite(c)):
            continue
        for b, bm in sorted(baselines.items()):
            v = (bm.get(slice_name) or {}).get(pm, float("nan"))
            if not np.isfinite(v):
                continue
            if c < v - rc.slice_regression_max:
                ok = False
                reasons.append(f"slice {slice_name} regresses against baseline {b}: {pm} {c:.4f} < {v:.4f} - "
                               f"rank.slice_regression_max {rc.slice_regression_max}")
    if ok:
        reasons.append(f"no gated slice trails a baseline by more than {rc.slice_regression_max} ({pm})")
    return ok, reasons


def beats_baselines(challenger: dict[str, dict[str, float]], baselines: dict[str, dict[str, dict[str, float]]],
                    rc: "RankConfig") -> tuple[bool, list[str]]:
    """Whether the challenger's overall primary metric reaches the best baseline's plus
    ``rank.min_gain_over_baselines`` (no check when that is None or there are no baselines)."""
    gain, pm = rc.min_gain_over_baselines, rc.primary_metric
    vals = {b: (bm.get("all") or {}).get(pm, float("nan")) for b, bm in baselines.items()}
    vals = {b: v for b, v in vals.items() if np.isfinite(v)}
    if gain is None or not vals:
        return True, []
    best = max(vals, key=lambda b: vals[b])
    c = challenger["all"].get(pm, float("nan"))
    if c >= vals[best] + gain:
        return True, [f"{pm}: challenger {c:.4f} >= best baseline {best} {vals[best]:.4f} + "
                      f"rank.min_gain_over_baselines {gain}"]
    return False, [f"{pm}: challenger {c:.4f} < best baseline {best} {vals[best]:.4f} + "
                   f"rank.min_gain_over_baselines {gain}: a model that loses to a baseline is not promoted"]


def decide(challenger: dict[str, dict[str, float]], champion: dict[str, dict[str, float]] | None,
           rc: "RankConfig", baselines: dict[str, dict[str, dict[str, float]]] | None = None) -> tuple[bool, list[str]]:
    """Promotion decision from slice -> metric -> value of challenger, champion and (optionally) the
    baselines (system -> slice -> metric -> value)."""
    pm = rc.primary_metric
    c_val = challenger["all"].get(pm, float("nan"))
    if not np.isfinite(c_val):
        return False, [f"challenger {pm} is not finite ({c_val})"]
    beat_ok, beat_reasons = beats_baselines(challenger, baselines or {}, rc)
    slice_ok, slice_reasons = baseline_regressions(challenger, baselines or {}, rc)
    base_ok, base_reasons = beat_ok and slice_ok, beat_reasons + slice_reasons
    if champion is None:
        if not base_ok:
            return False, ["no current champion, but the challenger loses to a baseline", *base_reasons]
        return True, ["no current champion: the first evaluated model becomes champion", *base_reasons]
    h_val = champion["all"].get(pm, float("nan"))
    reasons, ok = [], True
    if not np.isfinite(h_val) or c_val > h_val + rc.promote_margin:
        reasons.append(f"{pm}: challenger {c_val:.4f} > champion {h_val:.4f} + margin {rc.promote_margin}")
    else:
        ok = False
        reasons.append(f"{pm}: challenger {c_val:.4f} does not beat champion {h_val:.4f} by more than margin "
                       f"{rc.promote_margin}" + (" (a tie)" if c_val == h_val else ""))
    for slice_name in _gated(rc):
        cm, hm = challenger.get(slice_name), champion.get(slice_name)
        c = (cm or {}).get(pm, float("nan"))
        h = (hm or {}).get(pm, float("nan"))
        if not (np.isfinite(c) and np.isfinite(h)):
            continue
        if not (_enough(cm, rc) and _enough(hm, rc)):
            reasons.append(f"slice {slice_name} not gated: fewer than rank.slice_min_queries {rc.slice_min_queries} queries")
            continue
        if c < h - rc.slice_tolerance:
            ok = False
            reasons.append(f"slice {slice_name} regresses: {pm} {c:.4f} < champion {h:.4f} - tolerance {rc.slice_tolerance}")
        else:
            reasons.append(f"slice {slice_name} ok: {pm} {c:.4f} vs champion {h:.4f}")
    if not base_ok:
        ok = False
    return ok, reasons + base_reasons


def gate_decision(challenger: dict[str, dict[str, float]], champion: dict[str, dict[str, float]] | None,
                  rc: "RankConfig", challenger_version: str, champion_version: str | None,
                  baselines: dict[str, dict[str, dict[str, float]]] | None = None) -> tuple[bool, list[str]]:
    """:func:`decide`, except that a challenger which already is the champion is kept as it is."""
    if champion_version is not None and str(champion_version) == str(challenger_version):
        return False, [f"version {challenger_version} is already the champion"]
    return decide(challenger, champion, rc, baselines)
