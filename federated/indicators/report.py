"""A result document as plain text (the CLI and the demo print this)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["format_report", "format_value"]


def format_value(kind: str, cell: Mapping[str, Any]) -> str:
    if cell["status"] != "released":
        return cell["status"]
    lo, hi = cell["ci95"]
    if kind == "rate":
        return f"{100 * cell['value']:5.1f} %  (95 % CI {100 * lo:.1f}–{100 * hi:.1f})"
    return f"{cell['value']:5.2f}    (95 % CI {lo:.2f}–{hi:.2f})"


def format_report(doc: Mapping[str, Any], *, institutions: bool = True) -> str:
    privacy = doc["privacy"]
    lines = [
        f"Regional quality indicators {doc['period']['start'][:10]} – {doc['period']['end'][:10]}"
        f" (run {doc['run_label']})",
        f"privacy: ε = {privacy['epsilon_per_node']:g} per node over "
        f"{privacy['histograms_per_node']} counts (ε {privacy['epsilon_per_count']:.4f} each), "
        f"δ = 0, unit = patient; cells under {privacy['min_count']} suppressed",
        "institutions: "
        + ", ".join(
            f"{i['org']} ({i['status']}{': ' + i['reason'] if i.get('reason') else ''})"
            for i in doc["institutions"]
        ),
    ]
    for ind in doc["indicators"]:
        lines.append(f"{ind['title']}  [{ind['id']}]")
        noise = ind["noise"]
        for cell in ind["cells"]:
            if cell["scope"] == "institution" and (not institutions or cell["dimension"] != "all"):
                continue
            who = "region" if cell["scope"] == "region" else cell["institution"]
            dim = cell["dimension"]
            stratum = "" if dim == "all" else f" {dim}={cell['stratum']}"
            if cell["scope"] == "institution":
                who = f"  {who}"
            text = format_value(ind["kind"], cell)
            if cell["status"] == "released":
                text += f"  n≈{cell['denominator']}"
                if cell["scope"] == "region" and cell.get("suppressed_at"):
                    text += f"  (suppressed at {', '.join(cell['suppressed_at'])})"
            lines.append(f"  {who + stratum:<34} {text}")
        scale = noise["numerator_scale"]["all"], noise["denominator_scale"]["all"]
        lines.append(
            f"  noise: ε {noise['epsilon_per_cell']:.4f} per cell, discrete Laplace scale "
            f"{scale[0]:g} (numerator) / {scale[1]:g} (denominator) per node; "
            f"source: {ind['source']['guideline'][:90]}"
        )
    return "\n".join(lines)
