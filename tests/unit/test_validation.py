"""The validation rules of the public API (WIRE.md, "Validation rules"), one boundary at a time."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from service.domain.errors import Code, FieldViolation, InvalidArgument
from service.domain.model import NewImage
from service.domain.validation import (
    DEFAULT_PAGE_SIZE,
    Violations,
    check_description,
    check_folder_id,
    check_image_id,
    check_labels,
    check_name,
    check_operation_id,
    check_uri,
    page_size,
    validate_image_id,
    validate_new_image,
    validate_operation_id,
)

GOOD_IMAGE_ID = "img" + "a1b2c3d4e5f6g7h8i"  # 20 characters


def fields_of(check: Callable[[Violations, Any], object], value: Any) -> list[str]:
    """The fields a single check reports for ``value`` (empty when the value is valid)."""
    v = Violations()
    check(v, value)
    return [item.field for item in v.items]


def new_image(**overrides: Any) -> NewImage:
    values: dict[str, Any] = {
        "folder_id": "b1gfolder",
        "name": "ubuntu-22",
        "description": "An image",
        "uri": "https://storage.example.com/images/ubuntu.img",
        "labels": {"env": "prod"},
    }
    values.update(overrides)
    return NewImage(**values)


# --- image_id -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        GOOD_IMAGE_ID,
        "a" * 20,
        "a" + "0" * 19,
        "z9y8x7w6v5u4t3s2r1q0",
    ],
)
def test_image_id_of_20_lowercase_letters_and_digits_starting_with_a_letter_is_valid(
    value: str,
) -> None:
    assert len(value) == 20
    assert fields_of(check_image_id, value) == []


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("a" * 19, "19 characters"),
        ("a" * 21, "21 characters"),
        ("", "empty"),
        ("Img" + "a" * 17, "uppercase first letter"),
        ("img" + "A" * 17, "uppercase later"),
        ("1" + "a" * 19, "starts with a digit"),
        ("img" + "é" * 17, "non-ASCII letters"),
        ("img" + "\u0663" * 17, "non-ASCII digits"),
        ("img-" + "a" * 16, "hyphen"),
        ("img_" + "a" * 16, "underscore"),
        ("img " + "a" * 16, "space"),
        ("a" * 19 + "\n", "trailing newline (full match)"),
    ],
)
def test_image_id_violating_the_rule_is_reported_on_image_id(value: str, why: str) -> None:
    assert fields_of(check_image_id, value) == ["image_id"], why


def test_validate_image_id_raises_invalid_argument_on_image_id() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_image_id("A" * 20)
    assert [v.field for v in info.value.violations] == ["image_id"]
    assert info.value.code is Code.INVALID_ARGUMENT


def test_validate_image_id_accepts_a_good_id() -> None:
    assert validate_image_id(GOOD_IMAGE_ID) is None


# --- folder_id ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "a",
        "b1gfolder",
        "a" * 50,
        "folder.with-dots-and-dashes",
        "a-",
        "a.",
    ],
)
def test_folder_id_of_at_most_50_characters_matching_the_pattern_is_valid(value: str) -> None:
    assert fields_of(check_folder_id, value) == []


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("a" * 51, "51 characters"),
        ("Folder", "uppercase"),
        ("1folder", "starts with a digit"),
        ("-folder", "starts with a hyphen"),
        (".folder", "starts with a dot"),
        ("folder_id", "underscore"),
        ("folder id", "space"),
        ("fold\u00e9r", "non-ASCII"),
        ("folder\n", "trailing newline (full match)"),
    ],
)
def test_folder_id_violating_the_rule_is_reported_on_folder_id(value: str, why: str) -> None:
    assert fields_of(check_folder_id, value) == ["folder_id"], why


def test_empty_folder_id_is_a_required_error() -> None:
    v = Violations()
    check_folder_id(v, "")
    assert v.items == [FieldViolation("folder_id", "is required")]


# --- name -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "ab",
        "a1",
        "a-b",
        "a--b",
        "ubuntu-22-04",
        "a" * 63,
        "a" + "-" * 61 + "b",
    ],
)
def test_name_of_2_to_63_characters_matching_the_pattern_is_valid(value: str) -> None:
    assert fields_of(check_name, value) == []


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "empty"),
        ("a", "1 character"),
        ("a" * 64, "64 characters"),
        ("ab-", "trailing hyphen"),
        ("-ab", "leading hyphen"),
        ("Ab", "uppercase"),
        ("aB", "uppercase later"),
        ("a_b", "underscore"),
        ("1ab", "leading digit"),
        ("ab cd", "space: only a prefix matches"),
        ("ab\n", "trailing newline: only a prefix matches"),
        ("a.b", "dot"),
        ("\u00e9t\u00e9", "non-ASCII"),
    ],
)
def test_name_violating_the_rule_is_reported_on_name(value: str, why: str) -> None:
    assert fields_of(check_name, value) == ["name"], why


def test_name_violation_says_invalid_resource_name() -> None:
    v = Violations()
    check_name(v, "A")
    assert v.items[0].description.startswith("invalid resource name")


# --- description ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "x", "d" * 1024, "Any text, Ünïcödé and\nnewlines."])
def test_description_of_at_most_1024_characters_is_valid(value: str) -> None:
    assert fields_of(check_description, value) == []


def test_description_of_1025_characters_is_reported_on_description() -> None:
    assert fields_of(check_description, "d" * 1025) == ["description"]


# --- uri ------------------------------------------------------------------------------------


def _uri_of_length(length: int) -> str:
    prefix = "https://example.com/"
    return prefix + "p" * (length - len(prefix))


@pytest.mark.parametrize(
    "value",
    [
        "http://example.com",
        "https://example.com/images/ubuntu.img",
        "https://example.com:8443/a?b=c#d",
        "http://127.0.0.1/image",
        "http://[::1]:8080/image",
        "HTTPS://EXAMPLE.COM/image",
        _uri_of_length(1024),
    ],
)
def test_http_or_https_uri_with_a_host_of_at_most_1024_characters_is_valid(value: str) -> None:
    assert fields_of(check_uri, value) == []


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (_uri_of_length(1025), "1025 characters"),
        ("ftp://example.com/image", "ftp scheme"),
        ("file:///etc/passwd", "file scheme, no host"),
        ("not a url", "no scheme"),
        ("http://", "no host"),
        ("https:///path/only", "no host"),
        ("http:example.com", "no authority"),
        ("//example.com/image", "no scheme"),
        ("example.com/image", "no scheme"),
        ("http://example.com:99999/", "port out of range"),
        ("http://example.com:port/", "non-numeric port"),
        ("http://[::1/", "broken IPv6 literal"),
    ],
)
def test_uri_violating_the_rule_is_reported_on_uri(value: str, why: str) -> None:
    assert fields_of(check_uri, value) == ["uri"], why


def test_empty_uri_is_a_required_error() -> None:
    v = Violations()
    check_uri(v, "")
    assert v.items == [FieldViolation("uri", "is required")]


@pytest.mark.parametrize(
    "value",
    [
        "http://exa\nmple.com/image",
        "http://example.com/ima\tge",
        " http://example.com/image",
        "http://exa mple.com/image",
    ],
)
def test_uri_with_whitespace_or_control_characters_is_reported_on_uri(value: str) -> None:
    assert fields_of(check_uri, value) == ["uri"]


# --- labels ---------------------------------------------------------------------------------


def _labels(count: int) -> dict[str, str]:
    return {f"k{i}": f"v{i}" for i in range(count)}


@pytest.mark.parametrize(
    "labels",
    [
        {},
        {"env": "prod"},
        {"a": ""},
        {"k": "v" * 63},
        {"k" * 63: "v"},
        {"a-b_c9": "-_0a"},
        _labels(64),
    ],
)
def test_labels_within_the_rules_are_valid(labels: Mapping[str, str]) -> None:
    assert fields_of(check_labels, labels) == []


def test_65_labels_are_reported_on_labels_once() -> None:
    assert fields_of(check_labels, _labels(65)) == ["labels"]


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("", "empty key"),
        ("k" * 64, "64-character key"),
        ("Env", "uppercase"),
        ("1env", "leading digit"),
        ("-env", "leading hyphen"),
        ("_env", "leading underscore"),
        ("env.x", "dot"),
        ("env x", "space: only a prefix matches"),
        ("env\n", "trailing newline: only a prefix matches"),
        ("\u00e9nv", "non-ASCII"),
    ],
)
def test_bad_label_key_is_reported_on_labels(key: str, why: str) -> None:
    assert fields_of(check_labels, {key: "v"}) == ["labels"], why


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("v" * 64, "64 characters"),
        ("Prod", "uppercase"),
        ("a.b", "dot"),
        ("a b", "space: only a prefix matches"),
        ("ab\n", "trailing newline: only a prefix matches"),
        ("\u00e9", "non-ASCII"),
    ],
)
def test_bad_label_value_is_reported_on_that_label(value: str, why: str) -> None:
    assert fields_of(check_labels, {"env": value}) == ["labels[env]"], why


def test_every_bad_label_is_reported() -> None:
    fields = fields_of(check_labels, {"Bad": "v", "good": "ok", "env": "Bad"})
    assert sorted(fields) == ["labels", "labels[env]"]


# --- page_size ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, DEFAULT_PAGE_SIZE), (1, 1), (20, 20), (999, 999), (1000, 1000)],
)
def test_page_size_between_0_and_1000_is_used_and_0_means_20(value: int, expected: int) -> None:
    v = Violations()
    assert page_size(v, value) == expected
    assert v.items == []


def test_default_page_size_is_20() -> None:
    assert DEFAULT_PAGE_SIZE == 20


@pytest.mark.parametrize("value", [-1, 1001, -(2**63), 2**63 - 1])
def test_page_size_out_of_range_is_reported_on_page_size(value: int) -> None:
    v = Violations()
    page_size(v, value)
    assert [item.field for item in v.items] == ["page_size"]


# --- operation_id ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["o", "opn" + "a" * 17, "x" * 50])
def test_operation_id_of_1_to_50_characters_is_valid(value: str) -> None:
    assert fields_of(check_operation_id, value) == []


def test_empty_operation_id_is_a_required_error() -> None:
    v = Violations()
    check_operation_id(v, "")
    assert v.items == [FieldViolation("operation_id", "is required")]


def test_operation_id_of_51_characters_is_reported_on_operation_id() -> None:
    assert fields_of(check_operation_id, "x" * 51) == ["operation_id"]


def test_validate_operation_id_raises_invalid_argument_on_operation_id() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_operation_id("")
    assert [v.field for v in info.value.violations] == ["operation_id"]


# --- whole requests and the error ------------------------------------------------------------


def test_a_valid_create_request_passes() -> None:
    assert validate_new_image(new_image()) is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"folder_id": ""}, "folder_id"),
        ({"name": "Bad_Name"}, "name"),
        ({"description": "d" * 1025}, "description"),
        ({"uri": ""}, "uri"),
        ({"uri": "ftp://example.com/x"}, "uri"),
        ({"labels": _labels(65)}, "labels"),
    ],
)
def test_a_create_request_with_one_bad_field_names_that_field(
    overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_new_image(new_image(**overrides))
    assert [v.field for v in info.value.violations] == [field]


def test_every_bad_field_of_a_create_request_is_reported_at_once() -> None:
    request = new_image(
        folder_id="Folder",
        name="x",
        description="d" * 1025,
        uri="not a url",
        labels={"Key": "v"},
    )
    with pytest.raises(InvalidArgument) as info:
        validate_new_image(request)
    assert [v.field for v in info.value.violations] == [
        "folder_id",
        "name",
        "description",
        "uri",
        "labels",
    ]


def test_invalid_argument_message_starts_with_request_validation_error_and_names_the_field() -> (
    None
):
    with pytest.raises(InvalidArgument) as info:
        validate_new_image(new_image(name="x"))
    assert info.value.message.startswith("Request validation error: ")
    assert info.value.message.startswith("Request validation error: name: invalid resource name")
    assert str(info.value) == info.value.message


def test_invalid_argument_is_not_retryable() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_image_id("")
    assert info.value.retryable is False
    assert info.value.code == 3


def test_violations_raise_nothing_when_empty() -> None:
    v = Violations()
    assert v.raise_if_any() is None
    assert v.items == []
