"""The domain model: applying a change to an image, and the JSON forms stored in the database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from service.domain.errors import Code, image_name_taken, image_not_found
from service.domain.model import (
    Image,
    ImageChange,
    ImageStatus,
    NewOperation,
    Operation,
    OperationError,
    OperationKind,
    utcnow,
)

CREATED_AT = datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=UTC)


def make_image(**overrides: object) -> Image:
    values: dict[str, object] = {
        "id": "img" + "a1b2c3d4e5f6g7h8i",
        "folder_id": "b1gfolder",
        "name": "ubuntu-22",
        "description": "Ubuntu 22.04",
        "checksum": "d41d8cd98f00b204e9800998ecf8427e",
        "status": ImageStatus.READY,
        "created_at": CREATED_AT,
        "labels": {"env": "prod", "team": "core"},
    }
    values.update(overrides)
    return Image(**values)  # type: ignore[arg-type]


# --- ImageChange.apply ----------------------------------------------------------------------


def test_an_empty_change_leaves_the_image_as_it_is() -> None:
    image = make_image()
    assert ImageChange().apply(image) == image


def test_a_name_change_changes_only_the_name() -> None:
    image = make_image()
    result = ImageChange(name="debian-12").apply(image)
    assert result.name == "debian-12"
    assert result.description == "Ubuntu 22.04"
    assert result.labels == {"env": "prod", "team": "core"}


def test_a_description_change_changes_only_the_description() -> None:
    result = ImageChange(description="new").apply(make_image())
    assert (result.name, result.description) == ("ubuntu-22", "new")
    assert result.labels == {"env": "prod", "team": "core"}


def test_an_empty_description_clears_it() -> None:
    assert ImageChange(description="").apply(make_image()).description == ""


def test_labels_are_replaced_as_a_whole_not_merged() -> None:
    result = ImageChange(labels={"owner": "alice"}).apply(make_image())
    assert result.labels == {"owner": "alice"}


def test_empty_labels_clear_every_label() -> None:
    assert ImageChange(labels={}).apply(make_image()).labels == {}


def test_apply_keeps_what_a_change_cannot_touch() -> None:
    image = make_image(status=ImageStatus.UPDATING)
    result = ImageChange(name="n2", description="d2", labels={"a": "b"}).apply(image)
    assert (result.id, result.folder_id, result.checksum, result.status, result.created_at) == (
        image.id,
        image.folder_id,
        image.checksum,
        ImageStatus.UPDATING,
        CREATED_AT,
    )


def test_apply_does_not_mutate_the_input_image() -> None:
    labels = {"env": "prod"}
    image = make_image(labels=labels)
    ImageChange(name="other", description="other", labels={"x": "y"}).apply(image)
    assert image == make_image(labels={"env": "prod"})
    assert labels == {"env": "prod"}
    assert image.labels is labels


def test_the_result_does_not_share_labels_with_the_change() -> None:
    new_labels = {"owner": "alice"}
    result = ImageChange(labels=new_labels).apply(make_image())
    new_labels["owner"] = "mallory"
    assert result.labels == {"owner": "alice"}


def test_the_result_does_not_share_labels_with_the_input_image() -> None:
    labels = {"env": "prod"}
    result = ImageChange(name="other").apply(make_image(labels=labels))
    labels["env"] = "dev"
    assert result.labels == {"env": "prod"}


# --- Image snapshot -------------------------------------------------------------------------


def test_snapshot_is_plain_json() -> None:
    assert make_image().snapshot() == {
        "id": "img" + "a1b2c3d4e5f6g7h8i",
        "folder_id": "b1gfolder",
        "name": "ubuntu-22",
        "description": "Ubuntu 22.04",
        "checksum": "d41d8cd98f00b204e9800998ecf8427e",
        "status": 2,
        "created_at": "2024-05-17T12:30:45.123456+00:00",
        "labels": {"env": "prod", "team": "core"},
    }


@pytest.mark.parametrize("status", list(ImageStatus))
def test_snapshot_round_trips_through_json(status: ImageStatus) -> None:
    image = make_image(status=status)
    restored = Image.from_snapshot(json.loads(json.dumps(image.snapshot())))
    assert restored == image
    assert restored.status is status


@pytest.mark.parametrize(
    "created_at",
    [
        datetime(2024, 1, 1, tzinfo=UTC),
        datetime(2024, 1, 1, 3, 0, tzinfo=timezone(timedelta(hours=3))),
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_snapshot_round_trip_keeps_the_instant_and_its_offset(created_at: datetime) -> None:
    restored = Image.from_snapshot(make_image(created_at=created_at).snapshot())
    assert restored.created_at == created_at
    assert restored.created_at.utcoffset() == created_at.utcoffset()


def test_snapshot_round_trip_keeps_empty_labels_and_description() -> None:
    image = make_image(labels={}, description="")
    assert Image.from_snapshot(image.snapshot()) == image


def test_snapshot_labels_are_a_copy() -> None:
    image = make_image()
    snapshot = image.snapshot()
    snapshot["labels"]["env"] = "dev"
    assert image.labels["env"] == "prod"


def test_from_snapshot_rejects_an_unknown_status() -> None:
    data = make_image().snapshot()
    data["status"] = 42
    with pytest.raises(ValueError, match="42"):
        Image.from_snapshot(data)


# --- ImageChange JSON -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "as_json"),
    [
        (ImageChange(), {}),
        (ImageChange(name="n2"), {"name": "n2"}),
        (ImageChange(description=""), {"description": ""}),
        (ImageChange(labels={}), {"labels": {}}),
        (
            ImageChange(name="n2", description="d", labels={"a": "b"}),
            {"name": "n2", "description": "d", "labels": {"a": "b"}},
        ),
    ],
)
def test_image_change_json_keeps_only_what_changes(
    change: ImageChange, as_json: dict[str, object]
) -> None:
    assert change.to_json() == as_json


@pytest.mark.parametrize(
    "change",
    [
        ImageChange(),
        ImageChange(name="n2"),
        ImageChange(description=""),
        ImageChange(labels={}),
        ImageChange(name="n2", description="d", labels={"a": "b", "c": ""}),
    ],
)
def test_image_change_round_trips_through_json(change: ImageChange) -> None:
    restored = ImageChange.from_json(json.loads(json.dumps(change.to_json())))
    assert restored == change


def test_an_empty_value_survives_the_json_round_trip_as_a_clear_not_as_no_change() -> None:
    restored = ImageChange.from_json(ImageChange(description="", labels={}).to_json())
    assert restored.description == ""
    assert restored.labels == {}
    assert restored.name is None


def test_image_change_json_labels_are_a_copy() -> None:
    labels = {"a": "b"}
    as_json = ImageChange(labels=labels).to_json()
    as_json["labels"]["a"] = "changed"
    assert labels == {"a": "b"}


# --- errors and time ------------------------------------------------------------------------


def test_operation_error_from_exception_keeps_code_and_message() -> None:
    error = OperationError.from_exception(image_name_taken("ubuntu-22"))
    assert error == OperationError(Code.ALREADY_EXISTS, "Image with name ubuntu-22 already exists")


def test_image_not_found_names_the_image() -> None:
    error = image_not_found("imgx")
    assert (error.code, error.message) == (Code.NOT_FOUND, "Image imgx not found")


def test_utcnow_is_aware_and_utc() -> None:
    now = utcnow()
    assert now.utcoffset() == timedelta(0)


# --- NewOperation: what a call knows, made whole by accepting it -----------------------------


def test_an_accepted_operation_is_unfinished_in_the_folder_and_at_the_time_it_was_given():
    new = NewOperation("opn" + "1" * 17, OperationKind.DELETE_IMAGE, "img" + "2" * 17, "alice")
    assert new.accepted("b1gfolder", CREATED_AT) == Operation(
        id=new.id,
        kind=OperationKind.DELETE_IMAGE,
        image_id=new.image_id,
        folder_id="b1gfolder",
        description="Delete image",
        created_at=CREATED_AT,
        created_by="alice",
        modified_at=CREATED_AT,
        done=False,
    )


def test_a_new_operation_has_no_folder_and_no_time_of_its_own():
    """What only the database knows cannot be made up before it is asked."""
    fields = set(NewOperation.__dataclass_fields__)
    assert fields.isdisjoint({"folder_id", "created_at", "modified_at", "done"})
