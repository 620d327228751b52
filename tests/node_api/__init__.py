"""Tests of the node API, auth, CLI, ingestion and the nodes demo chapter."""
