"""Where a SuperNode (and ``ipjms fl score``) gets its node's patient pseudonyms: the region's
pseudonymisation authority (``pseudonym-url`` in the node config, the node's own credentials;
no key on the node) or, in older regions, the shared linkage key (``linkage-key``).

The authority's answers are kept in the process's own state folder (``data-dir`` in the node
config, ``--data-dir`` of ``ipjms fl score``): ``pseudonyms.db``, a SQLite file readable by its
owner only, keyed like the node's own store (key version + key fingerprint + HMAC-SHA256 of
the input under a store key derived from the node's signing key, which the SuperNode loads
anyway and which is not in the file; ``trust/pseudonym_store.py``, the one implementation both
use). So a restarted SuperNode
asks the authority nothing for the patients it met before, instead of re-asking for every one
against its budget (300 evaluations an hour, ``trust/oprf_service.py``); a key re-made under
the same version number has another fingerprint and is never answered from the file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trust.pseudonymiser import LinkageKeyPseudonymiser, Pseudonymiser, authority_pseudonymiser

__all__ = ["node_pseudonymiser", "from_node_config"]


def node_pseudonymiser(
    creds: Any,
    *,
    pseudonym_url: str | None = None,
    linkage_key: Path | str | None = None,
    state_dir: Path | str | None = None,
) -> Pseudonymiser:
    """The authority's OPRF when ``pseudonym_url`` is given — its answers kept in
    ``<state_dir>/pseudonyms.db`` (None: in memory only) — else the linkage key file."""
    if pseudonym_url:
        store = None
        if state_dir is not None:
            from trust.pseudonym_store import open_file_store
            from trust.pseudonymiser import store_key

            store = open_file_store(state_dir, store_key(creds))
        return authority_pseudonymiser(pseudonym_url, creds, store=store)  # the regional CA only
    if not linkage_key:
        raise ValueError("neither a pseudonym service URL nor a linkage key is configured")
    from trust.pseudonym import load_or_create_linkage_key

    path = Path(linkage_key)
    if not path.exists():
        raise FileNotFoundError(f"linkage key {path} not found")
    return LinkageKeyPseudonymiser(load_or_create_linkage_key(path))


def from_node_config(node_config: Mapping[str, Any], creds: Any) -> Pseudonymiser:
    """The SuperNode's pseudonymiser; its store in the SuperNode's ``data-dir``."""
    return node_pseudonymiser(
        creds,
        pseudonym_url=str(node_config.get("pseudonym-url") or "") or None,
        linkage_key=str(node_config.get("linkage-key") or "") or None,
        state_dir=str(node_config.get("data-dir") or "") or None,
    )
