"""The operating guide's target bands (its section 4) checked on a post-run validation's MC rows.

One :class:`BandCheck` per band: ``PASS`` or ``WARN`` with the value and the band, ``n/a`` when the
validation has no row to read it from. The ΔNLL@H band is the guide's for ``W_max = 8k``: at a smaller
budget the check still runs but says that the band is set at scale, so a tiny run is told, not failed.
Nothing here stops a run: the lines are printed and written into the report beside the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GUIDE_W_MAX = 8192
"""The working-context budget at which the guide sets its ΔNLL@H band."""


@dataclass(frozen=True)
class BandCheck:
    name: str
    value: float | None
    band: str
    status: str
    """``PASS``, ``WARN`` or ``n/a``."""
    note: str = ""

    def line(self) -> str:
        value = "-" if self.value is None else f"{self.value:.3f}"
        note = f"; {self.note}" if self.note else ""
        return f"{self.status} {self.name}: {value} (band {self.band}{note})"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "band": self.band, "status": self.status, "note": self.note}


def _check(name: str, value: float | None, lo: float, hi: float, band: str, note: str = "") -> BandCheck:
    if value is None:
        return BandCheck(name, None, band, "n/a", note or "no MC row with this metric")
    return BandCheck(name, value, band, "PASS" if lo <= value <= hi else "WARN", note)


def _mc_values(result: dict[str, Any], key: str) -> list[float]:
    return [float(r[key]) for r in result.get("rows", ()) if r.get("arm") == "mc" and r.get(key) is not None]


def check_bands(result: dict[str, Any]) -> list[BandCheck]:
    """The guide's bands on a validation ``result`` (``long_context.evaluate``'s rows and ``settings``):
    ΔNLL@H of the MC arm against full attention at its worst length (<= 0.10), the refocus swap rate
    (0.05-0.20) and residency (90-100 %), each averaged over the lengths."""
    budget = int(result["settings"]["budget"])
    deltas = _mc_values(result, "delta_nll_h")
    scale = "" if budget >= GUIDE_W_MAX else (f"the guide sets it at W_max {GUIDE_W_MAX // 1024}k; "
                                              f"at W={budget} it is indicative")
    swaps, residency = _mc_values(result, "swap_rate"), _mc_values(result, "residency")
    return [
        _check("ΔNLL@H, MC - full, worst length", max(deltas) if deltas else None, float("-inf"), 0.10,
               "<= 0.10", scale if deltas else ""),
        _check("swap rate", sum(swaps) / len(swaps) if swaps else None, 0.05, 0.20, "0.05-0.20"),
        _check("residency", sum(residency) / len(residency) if residency else None, 0.90, 1.0, "0.90-1.00"),
    ]
