"""``ipjms node ingest``: finding, ordering and applying FHIR/NDJSON/CSV files."""
