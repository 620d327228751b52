"""The alerting floor (pure): may a federated model, by its card, raise alerts?

One rule for both sides that may not import each other: each node's risk-model gate
(``node.care.model_gate``, with the node's own ``care.model_min_auroc`` /
``care.model_min_events``) and the authority console's model registry page (against the
region's default floor, :data:`REGION_FLOOR`). A model may raise alerts only when its card's
federated evaluation shows an AUROC of at least the floor over at least the floor's number of
outcome events. Anything else — a weak model, too few events to tell, a card that does not say,
no card — may not. A node may set a stricter floor than the region's default, never a laxer one
(``node/settings.py`` refuses a value below it). Imports nothing of ours.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_MIN_AUROC",
    "DEFAULT_MIN_EVENTS",
    "REGION_FLOOR",
    "ModelFloor",
    "FloorCheck",
    "GateVerdict",
    "assess",
    "gate",
]

# 0.70: the lower edge of "acceptable discrimination" (0.7 ≤ AUC < 0.8) in Hosmer, Lemeshow &
# Sturdivant, Applied Logistic Regression, 3rd ed. (Wiley 2013), §5.2.4 — a rule of thumb, not
# a clinical-benefit proof; a node's clinical lead may raise it.
DEFAULT_MIN_AUROC = 0.70
# 100: the minimum number of outcome events for validating a prognostic model's performance
# (Collins, Ogundimu & Altman, Stat Med 2016;35:214-226: "a minimum of 100 events and ideally
# 200 (or more)"); fewer and the AUROC is too imprecise to trust.
DEFAULT_MIN_EVENTS = 100


@dataclass(frozen=True)
class ModelFloor:
    """The least a model's card must show."""

    min_auroc: float
    min_events: int


REGION_FLOOR = ModelFloor(DEFAULT_MIN_AUROC, DEFAULT_MIN_EVENTS)

# What a card may fail to say, in the order it is checked.
MISSING_CARD, MISSING_EVALUATION, MISSING_AUROC, MISSING_EVENTS = (
    "card",
    "evaluation",
    "auroc",
    "events",
)


@dataclass(frozen=True)
class FloorCheck:
    """The figures against the floor. ``missing``: what the card does not say (then neither
    figure is judged); otherwise ``auroc_ok`` / ``events_ok`` compare each figure with it."""

    floor: ModelFloor
    auroc: float | None
    events: float | None
    missing: str | None

    @property
    def auroc_ok(self) -> bool:
        return self.auroc is not None and self.auroc >= self.floor.min_auroc

    @property
    def events_ok(self) -> bool:
        return self.events is not None and self.events >= self.floor.min_events

    @property
    def meets(self) -> bool:
        return self.missing is None and self.auroc_ok and self.events_ok


@dataclass(frozen=True)
class GateVerdict:
    model_id: str
    clinical_use: bool
    reason: str


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def assess(card: Mapping[str, Any] | None, floor: ModelFloor) -> FloorCheck:
    """The card's ``evaluation.auroc`` and ``evaluation.events`` (outcome events the federated
    evaluation saw, summed over nodes) against ``floor``."""
    if card is None:
        return FloorCheck(floor, None, None, MISSING_CARD)
    evaluation = card.get("evaluation")
    if not isinstance(evaluation, Mapping):
        return FloorCheck(floor, None, None, MISSING_EVALUATION)
    auroc = _number(evaluation.get("auroc"))
    events = _number(evaluation.get("events"))
    if auroc is None:
        return FloorCheck(floor, None, events, MISSING_AUROC)
    if events is None:
        return FloorCheck(floor, auroc, None, MISSING_EVENTS)
    return FloorCheck(floor, auroc, events, None)


_NOT_SAID = {
    MISSING_CARD: "no model card",
    MISSING_EVALUATION: "the card has no federated evaluation",
    MISSING_AUROC: "the card reports no federated AUROC",
    MISSING_EVENTS: "the card reports no count of outcome events",
}


def gate(model_id: str, card: Mapping[str, Any] | None, floor: ModelFloor) -> GateVerdict:
    """``clinical_use`` and why (English, for the RiskAssessment's note and the log)."""
    check = assess(card, floor)

    def no(reason: str) -> GateVerdict:
        return GateVerdict(model_id, False, f"not for clinical use: {reason}")

    if check.missing is not None:
        return no(_NOT_SAID[check.missing])
    assert check.auroc is not None and check.events is not None
    if not check.auroc_ok:
        return no(f"federated AUROC {check.auroc:.2f} is below the floor of {floor.min_auroc:.2f}")
    if not check.events_ok:
        return no(f"{check.events:.0f} outcome events, fewer than the {floor.min_events} required")
    return GateVerdict(
        model_id,
        True,
        f"federated AUROC {check.auroc:.2f} ≥ {floor.min_auroc:.2f} over {check.events:.0f} "
        f"outcome events (≥ {floor.min_events})",
    )
