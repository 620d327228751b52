"""Hospital-system input → FHIR R4 transaction Bundles.

Converters are pure (input → Bundle dict); the sockets and files live in thin modules beside them:

- ``node.feeds.synthetic`` — deterministic synthetic cohorts (``generate_cohort``);
- ``node.feeds.hl7v2`` — HL7 v2 ADT/ORU → Bundle, ACKs, the MLLP listener and client;
- ``node.feeds.csv_feed`` — simple lab / vital-sign CSV files → Bundle.

See README.md in this folder for the formats and the readmission risk function.
"""
