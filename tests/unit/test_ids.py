"""Resource and operation IDs: 20 characters, a 3-letter kind prefix, the rest random."""

from __future__ import annotations

import string

import pytest

from service.domain.ids import ID_LENGTH, IMAGE_PREFIX, OPERATION_PREFIX, new_id
from service.domain.validation import IMAGE_ID, Violations, check_image_id

ALPHABET = set(string.ascii_lowercase + string.digits)


@pytest.mark.parametrize("prefix", [IMAGE_PREFIX, OPERATION_PREFIX, "abc"])
def test_a_new_id_is_20_characters_starting_with_its_prefix(prefix: str) -> None:
    value = new_id(prefix)
    assert len(value) == 20
    assert ID_LENGTH == 20
    assert value[:3] == prefix


def test_kind_prefixes_are_img_and_opn() -> None:
    assert (IMAGE_PREFIX, OPERATION_PREFIX) == ("img", "opn")


def test_a_new_id_uses_only_lowercase_letters_and_digits() -> None:
    for _ in range(200):
        assert set(new_id(IMAGE_PREFIX)) <= ALPHABET


def test_the_random_part_draws_on_letters_and_digits_alike() -> None:
    seen: set[str] = set()
    for _ in range(500):
        seen.update(new_id(IMAGE_PREFIX)[3:])
    assert seen == ALPHABET


def test_new_ids_are_unique() -> None:
    values = [new_id(OPERATION_PREFIX) for _ in range(5000)]
    assert len(set(values)) == len(values)


@pytest.mark.parametrize("prefix", [IMAGE_PREFIX, OPERATION_PREFIX])
def test_every_new_id_passes_image_id_validation(prefix: str) -> None:
    for _ in range(1000):
        value = new_id(prefix)
        v = Violations()
        check_image_id(v, value)
        assert v.items == [], value
        assert IMAGE_ID.fullmatch(value) is not None


@pytest.mark.parametrize(
    "prefix",
    ["", "im", "imag", "IMG", "Img", "i1g", "1mg", "i-g", "im ", "img\n"],
)
def test_a_bad_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        new_id(prefix)


@pytest.mark.parametrize("prefix", ["\u00e4\u00f6\u00fc", "\u03b1\u03b2\u03b3", "\u00dfab"])
def test_a_non_ascii_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        new_id(prefix)


def test_every_character_is_equally_likely() -> None:
    """No character favoured (a byte taken modulo 36 would favour the first four by 1/7)."""
    counts = dict.fromkeys(ALPHABET, 0)
    for _ in range(20_000):
        for char in new_id(OPERATION_PREFIX)[3:]:
            counts[char] += 1
    mean = sum(counts.values()) / len(counts)
    assert all(abs(n - mean) < 0.05 * mean for n in counts.values()), counts
