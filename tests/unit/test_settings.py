"""Settings: the database URL from the environment or from a file (a mounted Secret)."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from service.config import Settings
from service.serve import settings_env

URL = "postgresql://lethe:pw@db.example:5432/lethe?sslmode=require"
DB_VARS = ("DATABASE_URL", "LETHE_DATABASE_URL", "DATABASE_URL_FILE", "LETHE_DATABASE_URL_FILE")


@pytest.fixture(autouse=True)
def _no_database_env(monkeypatch):
    for k in list(os.environ):
        if k.upper() in DB_VARS:
            monkeypatch.delenv(k)


def settings() -> Settings:
    return Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize("var", ["DATABASE_URL_FILE", "LETHE_DATABASE_URL_FILE"])
def test_database_url_is_read_from_the_file_and_stripped(monkeypatch, tmp_path, var):
    path = tmp_path / "database-url"
    path.write_text(f"  {URL}\n")
    monkeypatch.setenv(var, str(path))
    s = settings()
    assert s.database_url == URL
    assert s.database_url_file == path


def test_database_url_from_the_environment_still_works(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", URL)
    s = settings()
    assert (s.database_url, s.database_url_file) == (URL, None)


def test_neither_set_means_the_embedded_server():
    s = settings()
    assert s.database_url is None and s.database_url_file is None


def test_both_set_is_an_error(monkeypatch, tmp_path):
    path = tmp_path / "database-url"
    path.write_text(URL)
    monkeypatch.setenv("DATABASE_URL", URL)
    monkeypatch.setenv("LETHE_DATABASE_URL_FILE", str(path))
    with pytest.raises(ValidationError, match="not both") as e:
        settings()
    assert ":pw@" not in str(e.value)  # inputs are not echoed: the error does not leak the password


def test_a_missing_or_empty_file_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL_FILE", str(tmp_path / "absent"))
    with pytest.raises(ValidationError, match="cannot read"):
        settings()
    (tmp_path / "empty").write_text(" \n")
    monkeypatch.setenv("DATABASE_URL_FILE", str(tmp_path / "empty"))
    with pytest.raises(ValidationError, match="is empty"):
        settings()


def test_a_child_process_gets_database_url_without_conflicting_with_an_inherited_file(monkeypatch, tmp_path):
    """``lethe serve`` starts its worker with ``{**os.environ, **settings_env(s), "DATABASE_URL": url}``:
    a parent configured by DATABASE_URL_FILE (environment or .env) must not make the child see both."""
    path = tmp_path / "database-url"
    path.write_text(URL)
    monkeypatch.setenv("LETHE_DATABASE_URL_FILE", str(path))
    parent = settings()
    env = settings_env(parent)
    assert env["DATABASE_URL_FILE"] == env["LETHE_DATABASE_URL_FILE"] == ""  # blanked: empty = unset
    assert URL not in env.values() and str(path) not in env.values()
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"DATABASE_URL_FILE={path}\n")
    for k, v in {**os.environ, **env, "DATABASE_URL": URL}.items():
        monkeypatch.setenv(k, v)
    child = Settings()
    assert (child.database_url, child.database_url_file) == (URL, None)
