"""The coordinator's model registry (issue 5): federated models with their model cards.

``router`` is mounted by coordinator/http_api.py; it reads ``app.state.services`` (the
coordinator's directory/engine/peers) and ``app.state.creds`` (the CA certificate). Its table
comes from the coordinator's migrations (revision 0002); ``card_rules`` says what an upload
must hold.
"""

from coordinator.model_registry.router import create_router, router
from coordinator.model_registry.store import ModelStore, StoredModel

__all__ = ["router", "create_router", "ModelStore", "StoredModel"]
