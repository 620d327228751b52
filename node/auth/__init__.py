"""Node accounts, roles and scopes, tokens (the ``AUTH`` feature: node/auth/feature.py)."""
