"""Settings from KALPLA_* variables: defaults, validation naming the setting, redaction."""

from __future__ import annotations

import stat

import pytest

from kalpla_core import create_app
from kalpla_core.config import ConfigError, load_settings


def test_embedded_defaults(tmp_path):
    s = load_settings(environ={"KALPLA_INSTANCE_PATH": str(tmp_path)})
    assert s.database_url == f"sqlite:///{tmp_path / 'kalpla.db'}"
    assert (s.storage, s.mail, s.redis_url, s.celery_broker_url) == ("local", "outbox", None,
                                                                     None)
    assert s.plugins is None  # every installed plugin


def test_secret_key_generated_once_and_private(tmp_path):
    env = {"KALPLA_INSTANCE_PATH": str(tmp_path)}
    first = load_settings(environ=env).secret_key
    assert load_settings(environ=env).secret_key == first
    mode = stat.S_IMODE((tmp_path / "secret_key").stat().st_mode)
    assert mode == 0o600 and len(first) >= 32


@pytest.mark.parametrize(("env", "names"), [
    ({"KALPLA_DATABASE_URL": "mysql://x"}, "KALPLA_DATABASE_URL"),
    ({"KALPLA_SECRET_KEY": "short"}, "KALPLA_SECRET_KEY"),
    ({"KALPLA_STORAGE": "ftp"}, "KALPLA_STORAGE"),
    ({"KALPLA_MAIL": "Not A Name"}, "KALPLA_MAIL"),
    ({"KALPLA_STORAGE": "s3"}, "KALPLA_S3_BUCKET"),
    ({"KALPLA_MAIL": "smtp"}, "KALPLA_SMTP_URL"),
    ({"KALPLA_SMTP_URL": "http://mail"}, "KALPLA_SMTP_URL"),
    ({"KALPLA_REDIS_URL": "localhost:6379"}, "KALPLA_REDIS_URL"),
    ({"KALPLA_CELERY_BROKER_URL": "kafka://x"}, "KALPLA_CELERY_BROKER_URL"),
    ({"KALPLA_MAX_CONTENT_LENGTH": "lots"}, "KALPLA_MAX_CONTENT_LENGTH"),
    ({"KALPLA_ACCESS_TOKEN_TTL": "5"}, "KALPLA_ACCESS_TOKEN_TTL"),
    ({"KALPLA_LOG_LEVEL": "chatty"}, "KALPLA_LOG_LEVEL"),
    ({"KALPLA_CORS_ORIGINS": "app.example.org"}, "KALPLA_CORS_ORIGINS"),
    ({"KALPLA_PLUGINS": "example,example"}, "KALPLA_PLUGINS"),
    ({"KALPLA_AWS_ENDPOINT_URL": "localhost:5000"}, "KALPLA_AWS_ENDPOINT_URL"),
])
def test_invalid_settings_name_the_variable(tmp_path, env, names):
    with pytest.raises(ConfigError, match=names):
        load_settings(environ={"KALPLA_INSTANCE_PATH": str(tmp_path), **env})


def test_invalid_settings_stop_the_app_factory(tmp_path):
    with pytest.raises(ConfigError, match="KALPLA_STORAGE"):
        create_app({"instance_path": str(tmp_path), "storage": "floppy"})


def test_mail_provider_must_be_provided_by_a_loaded_plugin(make_app):
    with pytest.raises(ConfigError, match=r"KALPLA_MAIL names 'ses', which no loaded plugin "
                                          r"provides \(known: outbox, smtp\)"):
        make_app(mail="ses")


def test_postgres_urls_use_psycopg3(tmp_path):
    s = load_settings(environ={"KALPLA_INSTANCE_PATH": str(tmp_path),
                               "KALPLA_DATABASE_URL": "postgresql://u:pw@db/kalpla"})
    assert s.database_url == "postgresql+psycopg://u:pw@db/kalpla"


def test_redacted_settings_hide_secrets(tmp_path):
    s = load_settings(environ={
        "KALPLA_INSTANCE_PATH": str(tmp_path),
        "KALPLA_SECRET_KEY": "x" * 40,
        "KALPLA_DATABASE_URL": "postgresql://kalpla:hunter2-secret@db/kalpla",
        "KALPLA_REDIS_URL": "redis://:redispass@cache:6379/0",
    })
    shown = s.redacted()
    text = repr(shown)
    assert "x" * 40 not in text and "hunter2-secret" not in text and "redispass" not in text
    assert shown["KALPLA_SECRET_KEY"] == "********"
    assert shown["KALPLA_DATABASE_URL"] == "postgresql+psycopg://kalpla:********@db/kalpla"


def test_overrides_win_over_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("KALPLA_STORAGE", "ftp")  # invalid in the environment...
    s = load_settings({"storage": "local", "instance_path": str(tmp_path)})
    assert s.storage == "local"  # ...but overridden by the caller
