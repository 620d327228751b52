"""Fixtures for the consent registry tests (helpers live in consent_harness.py)."""

from consent_harness import pki, registry  # noqa: F401  (fixtures)
