"""What the entry points say without running anything: the settings in --help, bad settings in
one line (never a value), and the listen check."""

from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError

from service.domain.setup import PortTaken
from service.entrypoints.cli.failures import describe_settings_error
from service.entrypoints.cli.helptext import settings_rows
from service.entrypoints.cli.listen import ensure_can_listen
from service.runtime.settings import Settings


def test_every_setting_has_a_description_for_the_help():
    missing = [name for name, field in Settings.model_fields.items() if not field.description]
    assert missing == []


def test_a_settings_row_shows_the_variable_its_description_and_default():
    [(variable, text)] = settings_rows(["amqp_delivery_limit"])
    assert variable == "AMQP_DELIVERY_LIMIT"
    assert text.endswith("[default: 5]")
    assert "dead-lettered" in text


def test_a_bad_setting_is_one_line_naming_the_variable_and_never_its_value(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://user:sekret-password@host:notaport/db")
    monkeypatch.setenv("DB_POOL_MIN", "0")
    with pytest.raises(ValidationError) as caught:
        Settings()
    line = describe_settings_error(caught.value)
    assert "\n" not in line
    assert "DATABASE_URL:" in line
    assert "DB_POOL_MIN:" in line
    assert "sekret" not in line


def test_a_rule_across_settings_is_reported_in_its_own_words(monkeypatch):
    monkeypatch.setenv("TLS_CERT_FILE", "/x.pem")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert "TLS_CERT_FILE and TLS_KEY_FILE must be set together" in describe_settings_error(
        caught.value
    )


def test_listening_on_a_port_in_use_is_refused_with_what_to_do():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortTaken, match=r"in use .*set GRPC_LISTEN"):
            ensure_can_listen(f"127.0.0.1:{port}")


def test_listening_on_a_free_port_or_port_zero_passes():
    ensure_can_listen("127.0.0.1:0")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ensure_can_listen(f"127.0.0.1:{port}")


def test_listening_on_an_address_of_another_machine_is_refused():
    with pytest.raises(PortTaken, match="an address of this machine"):
        ensure_can_listen("192.0.2.1:50051")
