"""Opaque page tokens: what we made comes back intact; anything else is INVALID_ARGUMENT."""

from __future__ import annotations

import base64
import json

import pytest

from service.domain import paging
from service.domain.errors import InvalidArgument
from service.domain.paging import decode_page_token, encode_page_token, invalid_page_token

POSITION = {"after": "img" + "a1b2c3d4e5f6g7h8i", "folder": "b1gfolder"}


def token_for_payload(payload: str) -> str:
    """A token with a correct checksum around an arbitrary payload."""
    raw = f"{paging._digest(payload.encode())}.{payload}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def assert_invalid(token: str, field: str = "page_token") -> None:
    with pytest.raises(InvalidArgument) as info:
        decode_page_token(token, field)
    assert [v.field for v in info.value.violations] == [field]
    assert info.value.message == f"Request validation error: {field}: invalid page token"


# --- round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "position",
    [
        POSITION,
        {},
        {"after": ""},
        {"after": "x", "n": 3, "nested": {"a": [1, 2]}, "flag": True, "none": None},
        {"name": "\u00fcber-\u6f22\u5b57"},
    ],
)
def test_a_token_round_trips_to_its_position(position: dict[str, object]) -> None:
    assert decode_page_token(encode_page_token(position)) == position


def test_a_token_is_url_safe_without_padding() -> None:
    token = encode_page_token({"after": "?" * 50 + "\u00ff" * 10})
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert not token.endswith("=")


def test_a_token_is_deterministic() -> None:
    assert encode_page_token(POSITION) == encode_page_token(dict(reversed(POSITION.items())))


def test_the_payload_builder_matches_encode() -> None:
    payload = json.dumps({"v": 1, **POSITION}, separators=(",", ":"), sort_keys=True)
    assert token_for_payload(payload) == encode_page_token(POSITION)


# --- tampering ---------------------------------------------------------------------------------


def _change_char(token: str, index: int) -> str:
    replacement = "A" if token[index] != "A" else "B"
    return token[:index] + replacement + token[index + 1 :]


def test_a_token_with_any_one_character_changed_is_invalid() -> None:
    token = encode_page_token(POSITION)
    # The last character may carry unused padding bits, so changing it can decode to the same
    # bytes; every other character carries six bits of the token.
    for index in range(len(token) - 1):
        assert_invalid(_change_char(token, index))


@pytest.mark.parametrize("keep", [1, 2, 3, 10, -1, -2, -3, -4, -5])
def test_a_truncated_token_is_invalid(keep: int) -> None:
    assert_invalid(encode_page_token(POSITION)[:keep])


@pytest.mark.parametrize(
    "token",
    [
        base64.urlsafe_b64encode(b"random bytes that are not a token").decode(),
        base64.urlsafe_b64encode(bytes(range(256))).decode(),
        base64.urlsafe_b64encode(b"{}").decode(),
        base64.urlsafe_b64encode(b'{"v":1,"after":"x"}').decode(),
        base64.urlsafe_b64encode(b"000000000000.{}").decode(),
        "",
        "=",
        "!!!!",
        "not a token at all",
        "\u00e9\u00e9\u00e9\u00e9",
        "a",
    ],
)
def test_a_token_not_made_by_us_is_invalid(token: str) -> None:
    assert_invalid(token)


@pytest.mark.parametrize(
    "payload",
    [
        "{}",
        '{"v":2,"after":"x"}',
        '{"v":0}',
        '{"v":"1"}',
        '{"after":"x"}',
        "[1]",
        '"v"',
        "1",
        "null",
        "not json",
        "",
    ],
)
def test_a_checksummed_token_without_our_version_or_shape_is_invalid(payload: str) -> None:
    assert_invalid(token_for_payload(payload))


def test_a_token_of_another_version_is_invalid() -> None:
    assert_invalid(token_for_payload('{"after":"x","v":2}'))


def test_the_field_of_a_bad_token_can_be_named() -> None:
    assert_invalid("garbage", field="next_page")


def test_invalid_page_token_names_page_token() -> None:
    error = invalid_page_token()
    assert [v.field for v in error.violations] == ["page_token"]


def test_a_deeply_nested_checksummed_token_is_invalid_not_a_crash() -> None:
    depth = 100_000
    assert_invalid(token_for_payload("[" * depth + "]" * depth))


def test_the_version_key_is_reserved_in_a_position() -> None:
    with pytest.raises(ValueError, match="reserved"):
        encode_page_token({"v": "x", "after": "a"})
