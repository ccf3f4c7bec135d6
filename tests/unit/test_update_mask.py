"""Update-mask semantics (DESIGN.md, "Semantics decided here"), as resolve_update decides."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from service.domain.errors import InvalidArgument
from service.domain.model import ImageChange
from service.domain.validation import resolve_update

IMAGE_ID = "img" + "a1b2c3d4e5f6g7h8i"


def resolve(
    mask: Sequence[str] | None,
    name: str = "",
    description: str = "",
    labels: Mapping[str, str] | None = None,
    image_id: str = IMAGE_ID,
) -> ImageChange:
    return resolve_update(image_id, mask, name, description, {} if labels is None else labels)


def violation_fields(
    mask: Sequence[str] | None,
    name: str = "",
    description: str = "",
    labels: Mapping[str, str] | None = None,
    image_id: str = IMAGE_ID,
) -> list[str]:
    with pytest.raises(InvalidArgument) as info:
        resolve(mask, name, description, labels, image_id)
    return [v.field for v in info.value.violations]


# --- with a mask ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        (["name"], ImageChange(name="new-name")),
        (["description"], ImageChange(description="new text")),
        (["labels"], ImageChange(labels={"env": "prod"})),
        (["name", "labels"], ImageChange(name="new-name", labels={"env": "prod"})),
        (
            ["name", "description", "labels"],
            ImageChange(name="new-name", description="new text", labels={"env": "prod"}),
        ),
        (["name", "name"], ImageChange(name="new-name")),
    ],
)
def test_with_a_mask_only_the_listed_paths_change(mask: list[str], expected: ImageChange) -> None:
    change = resolve(mask, name="new-name", description="new text", labels={"env": "prod"})
    assert change == expected


@pytest.mark.parametrize(
    "path", ["id", "status", "folder_id", "labels.a", "", "Name", "name ", "checksum"]
)
def test_an_unknown_mask_path_is_reported_on_update_mask(path: str) -> None:
    assert violation_fields([path], name="new-name") == ["update_mask"]


def test_an_unknown_path_next_to_known_ones_is_still_reported() -> None:
    assert violation_fields(["name", "status"], name="new-name") == ["update_mask"]


def test_every_unknown_path_is_reported() -> None:
    assert violation_fields(["id", "status"]) == ["update_mask", "update_mask"]


def test_a_star_mask_replaces_all_three_fields() -> None:
    change = resolve(["*"], name="new-name", description="new text", labels={"env": "prod"})
    assert change == ImageChange(name="new-name", description="new text", labels={"env": "prod"})


def test_a_star_mask_clears_description_and_labels_left_empty() -> None:
    change = resolve(["*"], name="new-name")
    assert change == ImageChange(name="new-name", description="", labels={})


def test_a_star_mask_with_an_empty_name_is_reported_on_name() -> None:
    assert violation_fields(["*"]) == ["name"]


@pytest.mark.parametrize("mask", [["*", "name"], ["name", "*"], ["*", "*"]])
def test_a_star_combined_with_another_path_is_reported_on_update_mask(mask: list[str]) -> None:
    fields = violation_fields(mask, name="new-name")
    assert set(fields) == {"update_mask"}


def test_a_masked_name_with_an_empty_value_is_reported_on_name() -> None:
    assert violation_fields(["name"], name="") == ["name"]


def test_a_masked_empty_description_clears_it() -> None:
    change = resolve(["description"], description="")
    assert change == ImageChange(description="")
    assert change.description == ""


def test_masked_empty_labels_clear_them() -> None:
    change = resolve(["labels"], labels={})
    assert change == ImageChange(labels={})
    assert change.labels == {}


def test_a_masked_invalid_name_is_reported_on_name() -> None:
    assert violation_fields(["name"], name="Bad_Name") == ["name"]


def test_a_masked_too_long_description_is_reported_on_description() -> None:
    assert violation_fields(["description"], description="d" * 1025) == ["description"]


def test_masked_invalid_labels_are_reported_on_labels() -> None:
    assert violation_fields(["labels"], labels={"Key": "v"}) == ["labels"]


def test_fields_outside_the_mask_are_not_validated_and_do_not_change() -> None:
    change = resolve(
        ["description"],
        name="Bad_Name!",
        description="fine",
        labels={"Bad Key": "Bad Value"},
    )
    assert change == ImageChange(description="fine")
    assert change.name is None
    assert change.labels is None


def test_with_a_mask_of_only_description_a_populated_name_is_ignored() -> None:
    change = resolve(["description"], name="new-name", description="")
    assert change == ImageChange(description="")


def test_labels_in_the_change_are_a_copy_of_the_request_labels() -> None:
    labels = {"env": "prod"}
    change = resolve(["labels"], labels=labels)
    labels["env"] = "dev"
    assert change.labels == {"env": "prod"}


# --- without a mask -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "description", "labels", "expected"),
    [
        ("new-name", "", {}, ImageChange(name="new-name")),
        ("", "new text", {}, ImageChange(description="new text")),
        ("", "", {"env": "prod"}, ImageChange(labels={"env": "prod"})),
        (
            "new-name",
            "new text",
            {"env": "prod"},
            ImageChange(name="new-name", description="new text", labels={"env": "prod"}),
        ),
    ],
)
def test_without_a_mask_the_populated_fields_change(
    name: str, description: str, labels: dict[str, str], expected: ImageChange
) -> None:
    assert resolve(None, name=name, description=description, labels=labels) == expected


def test_without_a_mask_and_nothing_set_nothing_changes() -> None:
    change = resolve(None)
    assert change == ImageChange()
    assert (change.name, change.description, change.labels) == (None, None, None)


def test_without_a_mask_empty_values_are_not_changes() -> None:
    change = resolve(None, name="new-name", description="", labels={})
    assert change.description is None
    assert change.labels is None


def test_without_a_mask_populated_fields_are_validated() -> None:
    assert violation_fields(None, name="x", description="d" * 1025, labels={"K": "v"}) == [
        "name",
        "description",
        "labels",
    ]


def test_without_a_mask_an_empty_name_is_not_validated() -> None:
    assert resolve(None, description="text") == ImageChange(description="text")


# --- image_id and reporting -----------------------------------------------------------------


@pytest.mark.parametrize("mask", [None, ["description"], ["*"]])
def test_image_id_is_always_validated(mask: list[str] | None) -> None:
    fields = violation_fields(mask, name="new-name", description="text", image_id="bad")
    assert fields == ["image_id"]


def test_a_bad_image_id_is_reported_even_when_nothing_changes() -> None:
    assert violation_fields(None, image_id="") == ["image_id"]


def test_every_bad_field_of_an_update_is_reported_at_once() -> None:
    fields = violation_fields(
        ["name", "labels", "status"],
        name="-bad-",
        labels={"k": "Bad"},
        image_id="short",
    )
    assert fields == ["image_id", "update_mask", "name", "labels[k]"]


def test_update_error_message_starts_with_request_validation_error() -> None:
    with pytest.raises(InvalidArgument) as info:
        resolve(["status"])
    assert info.value.message.startswith("Request validation error: update_mask: ")
