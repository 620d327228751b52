"""What the model registry accepts (pure): the body of ``POST /models`` — a model card and its
weights, checked before anything is stored. Every refusal is a :class:`ModelRejected` whose
message names the field.

The card and weights themselves are the wire contract :mod:`protos.model_card`, the one
definition federated builds them by (the coordinator and federated may not import each other);
this module adds only what is the registry's own: the upload's shape and size limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protos.model_card import ModelRejected, check_card, check_weights

__all__ = ["MAX_MODEL_BYTES", "ModelRejected", "ModelUpload", "check_upload", "check_published"]

MAX_MODEL_BYTES = 16 * 1024 * 1024  # the whole upload (card + base64 weights)


@dataclass(frozen=True)
class ModelUpload:
    card: dict[str, Any]
    weights: dict[str, Any]
    published: bool


def check_published(body: Mapping[str, Any], default: bool) -> bool:
    flag = body.get("published", default)
    if not isinstance(flag, bool):
        raise ModelRejected("published must be true or false")
    return flag


def check_upload(body: Any) -> ModelUpload:
    """The body of ``POST /models``: ``{card, weights, published?}``."""
    if not isinstance(body, Mapping):
        raise ModelRejected("body must be a JSON object {card, weights, published}")
    if "card" not in body or "weights" not in body:
        raise ModelRejected("card and weights are required")
    return ModelUpload(
        check_card(body["card"]), check_weights(body["weights"]), check_published(body, True)
    )
