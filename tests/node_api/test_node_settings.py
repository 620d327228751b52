"""node/settings.py: one section per feature (``IPJMS_NODE_<SECTION>__<FIELD>``, ``[section]``
in node.toml), the flat names of earlier versions still read (the deploy files, the demo and
tests use them), the sectioned name winning, and a misspelt setting refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from node.settings import LEGACY_KEYS, NodeSettings, load_settings, nest_legacy_keys


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("IPJMS_NODE_"):
            monkeypatch.delenv(name)


def test_feature_settings_are_read_from_their_sections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IPJMS_NODE_EXCHANGE__COORDINATOR_ADDRESS", "coordinator:7443")
    monkeypatch.setenv("IPJMS_NODE_CONSENT__URL", "http://consent:8080")
    monkeypatch.setenv("IPJMS_NODE_PKI__CA_DIR", "/run/ca")
    monkeypatch.setenv("IPJMS_NODE_HL7__MLLP_PORT", "2575")
    monkeypatch.setenv("IPJMS_NODE_PORT", "8081")  # the node's own fields stay flat
    s = load_settings(tmp_path)
    assert s.exchange.coordinator_address == "coordinator:7443" and s.exchange.enabled
    assert s.consent.url == "http://consent:8080"
    assert s.pki.ca_dir == Path("/run/ca")
    assert s.hl7.mllp_port == 2575
    assert s.port == 8081
    assert s.needs_credentials and s.credentials_dir == tmp_path.resolve() / "credentials"


def test_defaults_switch_every_feature_off(tmp_path: Path) -> None:
    s = load_settings(tmp_path)
    assert not s.exchange.enabled and s.consent.url is None and s.hl7.mllp_port is None
    assert not s.needs_credentials


def test_legacy_flat_env_names_still_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # exactly what deploy/compose.yaml, the Helm chart, k8s and the demo set
    monkeypatch.setenv("IPJMS_NODE_COORDINATOR_ADDRESS", "coordinator:7443")
    monkeypatch.setenv("IPJMS_NODE_CONSENT_URL", "http://consent:8080")
    monkeypatch.setenv("IPJMS_NODE_CA_DIR", "/run/ca")
    monkeypatch.setenv("IPJMS_NODE_ORG_CREDENTIALS_DIR", "/run/org")
    monkeypatch.setenv("ipjms_node_mllp_port", "2575")  # case-insensitive, like the others
    s = load_settings(tmp_path)
    assert s.exchange.coordinator_address == "coordinator:7443"
    assert s.consent.url == "http://consent:8080"
    assert s.pki.ca_dir == Path("/run/ca") and s.credentials_dir == Path("/run/org")
    assert s.hl7.mllp_port == 2575


def test_sectioned_name_wins_and_explicit_values_win_over_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IPJMS_NODE_CONSENT_URL", "http://old")
    monkeypatch.setenv("IPJMS_NODE_CONSENT__URL", "http://new")
    assert load_settings(tmp_path).consent.url == "http://new"
    # explicit (CLI, code) values beat the environment, in either spelling
    assert load_settings(tmp_path, consent_url="http://cli").consent.url == "http://cli"
    assert load_settings(tmp_path, consent={"url": "http://kw"}).consent.url == "http://kw"


def test_node_toml_sections_and_legacy_keys(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text(
        'org_id = "org-t"\n'
        'consent_url = "http://legacy-key"\n'
        "[exchange]\n"
        'coordinator_address = "coordinator:7443"\n'
        "[hl7]\n"
        "mllp_port = 2575\n"
    )
    s = load_settings(tmp_path, require_init=True)
    assert s.org_id == "org-t"
    assert s.consent.url == "http://legacy-key"
    assert s.exchange.coordinator_address == "coordinator:7443"
    assert s.hl7.mllp_port == 2575


def test_a_misspelt_section_setting_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IPJMS_NODE_EXCHANGE__COORDINATR_ADDRESS", "coordinator:7443")
    with pytest.raises(ValidationError, match="coordinatr_address"):
        load_settings(tmp_path)


def test_every_legacy_key_names_a_real_section_field() -> None:
    for old, (section, field) in LEGACY_KEYS.items():
        model = NodeSettings.model_fields[section].annotation
        assert field in model.model_fields, (old, section, field)  # type: ignore[union-attr]
    assert nest_legacy_keys({"mllp_port": 1, "hl7": {"mllp_port": 2}}) == {"hl7": {"mllp_port": 2}}
