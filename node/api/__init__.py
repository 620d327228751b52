"""The node's HTTP API: FHIR REST routes, metrics, health, and the hooks other areas plug into."""
