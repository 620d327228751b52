"""Where a SuperNode (and ``ipjms fl score``) gets its node's patient pseudonyms: the region's
pseudonymisation authority (``pseudonym-url`` in the node config, the node's own credentials;
no key on the node) or, in older regions, the shared linkage key (``linkage-key``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trust.pseudonymiser import LinkageKeyPseudonymiser, Pseudonymiser, authority_pseudonymiser

__all__ = ["node_pseudonymiser"]


def node_pseudonymiser(
    creds: Any, *, pseudonym_url: str | None = None, linkage_key: Path | str | None = None
) -> Pseudonymiser:
    """The authority's OPRF when ``pseudonym_url`` is given, else the linkage key file."""
    if pseudonym_url:
        return authority_pseudonymiser(pseudonym_url, creds)  # trusts the regional CA only
    if not linkage_key:
        raise ValueError("neither a pseudonym service URL nor a linkage key is configured")
    from trust.pseudonym import load_or_create_linkage_key

    path = Path(linkage_key)
    if not path.exists():
        raise FileNotFoundError(f"linkage key {path} not found")
    return LinkageKeyPseudonymiser(load_or_create_linkage_key(path))


def from_node_config(node_config: Mapping[str, Any], creds: Any) -> Pseudonymiser:
    return node_pseudonymiser(
        creds,
        pseudonym_url=str(node_config.get("pseudonym-url") or "") or None,
        linkage_key=str(node_config.get("linkage-key") or "") or None,
    )
