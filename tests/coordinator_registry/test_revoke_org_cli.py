"""`ipjms coordinator revoke-org` (coordinator/README.md): the command the authority runs against
the coordinator's database; the organisation's very next call to the running coordinator is
refused, while the others' still pass. An unknown organisation is a clear CLI error."""

from __future__ import annotations

from registry_app import Registry
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.directory import Directory


def _revoke(registry: Registry, db_url: str, org: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, ["revoke-org", org, "--data-dir", "unused", "--db", db_url], catch_exceptions=False
    )
    return result.exit_code, result.output


def test_revoke_org_refuses_the_next_call_and_only_that_organisation(
    registry: Registry, db_url: str
) -> None:
    assert registry.get("org-tertiary", "/models").status_code == 200
    assert registry.get("org-clinic", "/models").status_code == 200

    code, output = _revoke(registry, db_url, "org-tertiary")
    assert code == 0 and "revoked org-tertiary" in output

    refused = registry.get("org-tertiary", "/models")  # the running app, no restart
    assert refused.status_code == 403, refused.text
    assert "org-tertiary is not a registered organisation" in refused.text
    assert registry.get("org-clinic", "/models").status_code == 200
    listed = {org.org_id: org.revoked for org in Directory(registry.engine).list()}
    assert listed["org-tertiary"] is True and listed["org-clinic"] is False


def test_revoke_org_of_an_unknown_organisation_says_so_and_changes_nothing(
    registry: Registry, db_url: str
) -> None:
    before = {org.org_id: org.revoked for org in Directory(registry.engine).list()}
    code, output = _revoke(registry, db_url, "org-nobody")
    assert code == 1 and "no organisation org-nobody in the directory" in output
    assert {org.org_id: org.revoked for org in Directory(registry.engine).list()} == before
