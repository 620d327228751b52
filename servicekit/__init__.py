"""The service kit: what every IPJMS service shares that is not trust.

OperationOutcome errors and their mapping (``outcome``), database engines and Alembic
(``storage``), JSON logging (``logging_setup``), Prometheus metrics (``service_metrics``) and
child-process handling (``processes``). It imports nothing of ours.
"""
