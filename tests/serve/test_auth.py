"""The API key: its sources, the constant-time check, and the headers a client sends it in."""

from __future__ import annotations

import logging

import pytest

from rac.config import ConfigError
from rac.serving.auth import APIKeyChecker, load_api_key, presented_key
from rac.serving.config import AuthConfig


def test_key_from_environment_variable(monkeypatch):
    monkeypatch.setenv("RAC_TEST_KEY", " s3cret \n")
    assert load_api_key(AuthConfig(api_key_env="RAC_TEST_KEY")) == "s3cret"


def test_key_file_wins_over_environment_and_is_not_logged(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("RAC_TEST_KEY", "from-env")
    key_file = tmp_path / "key"
    key_file.write_text("from-file-0123456789\n")
    with caplog.at_level(logging.DEBUG):
        key = load_api_key(AuthConfig(api_key_env="RAC_TEST_KEY", api_key_file=str(key_file)))
    assert key == "from-file-0123456789"
    assert "from-file-0123456789" not in caplog.text and str(key_file) in caplog.text


def test_missing_or_empty_key_file_and_required_key_fail(monkeypatch, tmp_path):
    monkeypatch.delenv("RAC_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_api_key(AuthConfig(api_key_env="RAC_TEST_KEY", api_key_file=str(tmp_path / "absent")))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_api_key(AuthConfig(api_key_env="RAC_TEST_KEY", api_key_file=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="auth.required is true"):
        load_api_key(AuthConfig(api_key_env="RAC_TEST_KEY", required=True))
    assert load_api_key(AuthConfig(api_key_env="RAC_TEST_KEY")) is None


def test_checker_accepts_only_the_key():
    checker = APIKeyChecker("k-123")
    assert checker.enabled
    assert checker.check("k-123")
    for wrong in (None, "", "k-12", "k-1234", "K-123"):
        assert not checker.check(wrong)
    open_checker = APIKeyChecker(None)
    assert not open_checker.enabled and open_checker.check(None)


def test_key_is_read_from_bearer_or_x_api_key():
    assert presented_key({"authorization": "Bearer abc"}) == "abc"
    assert presented_key({"authorization": "bearer  abc "}) == "abc"
    assert presented_key({"x-api-key": "xyz"}) == "xyz"
    assert presented_key({"authorization": "Basic dXNlcjpwYXNz", "x-api-key": "xyz"}) == "xyz"
    assert presented_key({}) is None
