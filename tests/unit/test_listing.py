"""List queries (WIRE.md, "Conventions of the public API"): the filter grammar, ``order_by``,
and the keyset page tokens of ``List`` and ``ListOperations``. No I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from service.domain.errors import InvalidArgument
from service.domain.listing import (
    MAX_CONDITIONS,
    MAX_FILTER_LENGTH,
    Condition,
    Operator,
    Ordering,
    image_query,
    operation_query,
    parse_filter,
    parse_order_by,
)
from service.domain.paging import decode_page_token, encode_page_token

FOLDER = "folder-one"
IMAGE_ID = "img" + "a1b2c3d4e5f6g7h8i"
OTHER_IMAGE_ID = "img" + "zzzzzzzzzzzzzzzzz"
OPERATION_ID = "opn" + "a1b2c3d4e5f6g7h8i"
WHEN = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)

EQ = Operator.EQUALS
HAS = Operator.CONTAINS


def violated(exc: InvalidArgument) -> list[str]:
    return [v.field for v in exc.violations]


def assert_invalid(call: object, field: str) -> InvalidArgument:
    """``call()`` raises ``InvalidArgument`` naming exactly ``field``."""
    with pytest.raises(InvalidArgument) as info:
        call()  # type: ignore[operator]
    assert violated(info.value) == [field]
    assert info.value.message.startswith(f"Request validation error: {field}: ")
    return info.value


# --- parse_filter: valid forms -----------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "   ", "\t", "\n \t "])
def test_an_empty_filter_has_no_conditions(text: str) -> None:
    assert parse_filter(text) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('name="abc"', Condition("name", EQ, "abc")),
        ("name='abc'", Condition("name", EQ, "abc")),
        ('name:"abc"', Condition("name", HAS, "abc")),
        ("name:'abc'", Condition("name", HAS, "abc")),
        ('id="img123"', Condition("id", EQ, "img123")),
        ("id:'123'", Condition("id", HAS, "123")),
        # whitespace anywhere between tokens, and around the whole expression
        ('name = "abc"', Condition("name", EQ, "abc")),
        ('  name  :  "abc"  ', Condition("name", HAS, "abc")),
        ("name\t=\n'abc'", Condition("name", EQ, "abc")),
        ('\r\nname="abc"\r\n', Condition("name", EQ, "abc")),
        # the value is any text; whitespace inside quotes is kept
        ('name=" a b "', Condition("name", EQ, " a b ")),
        ('name=""', Condition("name", EQ, "")),
        ("name=''", Condition("name", EQ, "")),
        ('name="x AND name=y"', Condition("name", EQ, "x AND name=y")),
        ('name="\u00fcber \u6f22\u5b57"', Condition("name", EQ, "\u00fcber \u6f22\u5b57")),
        # the other quote needs no escape
        ('''name="it's"''', Condition("name", EQ, "it's")),
        ("""name='say "hi"'""", Condition("name", EQ, 'say "hi"')),
        # SQL and LIKE metacharacters are plain text
        ("""name="'; DROP TABLE images; --\"""", Condition("name", EQ, "'; DROP TABLE images; --")),
        ('name:"%_"', Condition("name", HAS, "%_")),
        ('name:"$1"', Condition("name", HAS, "$1")),
    ],
)
def test_a_single_condition(text: str, expected: Condition) -> None:
    assert parse_filter(text) == [expected]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (r'name="a\"b"', 'a"b'),
        (r"name='a\'b'", "a'b"),
        (r'name="a\\b"', "a\\b"),
        (r"name='a\\b'", "a\\b"),
        (r'name="a\\"', "a\\"),
        (r'name="\\\""', '\\"'),
        (r'name="\"\""', '""'),
        (r"name='\'' ", "'"),
        # a backslash escapes any character, not only quotes and backslashes
        (r'name="a\bc"', "abc"),
        (r'name="\n"', "n"),
        ("name=\"abc' OR '1'='1\"", "abc' OR '1'='1"),
        (r"""name='abc\' OR \'1\'=\'1'""", "abc' OR '1'='1"),
    ],
)
def test_a_backslash_escapes_the_next_character(text: str, value: str) -> None:
    assert parse_filter(text) == [Condition("name", EQ, value)]


@pytest.mark.parametrize(
    "text",
    [
        'name="a" AND id:"b"',
        "name='a' AND id:'b'",
        'name="a"  AND\tid:"b"',
        'name="a"\nAND\nid:"b"',
        # AND needs no whitespace after a closing quote
        'name="a"AND id:"b"',
        'name="a"AND id:"b" ',
    ],
)
def test_two_conditions_joined_by_and(text: str) -> None:
    assert parse_filter(text) == [Condition("name", EQ, "a"), Condition("id", HAS, "b")]


def test_several_conditions_keep_their_order_and_may_repeat_a_field() -> None:
    text = r'name:"a" AND name:"c" AND id="x" AND name="a\"c"'
    assert parse_filter(text) == [
        Condition("name", HAS, "a"),
        Condition("name", HAS, "c"),
        Condition("id", EQ, "x"),
        Condition("name", EQ, 'a"c'),
    ]


def test_at_most_the_maximum_number_of_conditions_is_accepted() -> None:
    text = " AND ".join(f'name:"{i}"' for i in range(MAX_CONDITIONS))
    assert len(parse_filter(text)) == MAX_CONDITIONS


def test_a_filter_of_the_maximum_length_is_accepted() -> None:
    prefix = 'name:"'
    text = prefix + "x" * (MAX_FILTER_LENGTH - len(prefix) - 1) + '"'
    assert len(text) == MAX_FILTER_LENGTH
    assert parse_filter(text) == [Condition("name", HAS, "x" * (MAX_FILTER_LENGTH - 7))]


def test_a_filter_keyword_inside_a_value_is_text() -> None:
    assert parse_filter("name=\"AND\" AND id='OR'") == [
        Condition("name", EQ, "AND"),
        Condition("id", EQ, "OR"),
    ]


# --- parse_filter: malformed forms -------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # unknown field (names are case-sensitive)
        'size="1"',
        'Name="abc"',
        'ID="abc"',
        'createdAt="x"',
        'labels.os="linux"',
        'folder_id="f"',
        'name2="x"',
        # missing operator
        'name "abc"',
        "name",
        "id 'x'",
        # other operators
        'name=="abc"',
        'name!="abc"',
        'name<"abc"',
        'name~"abc"',
        'name IN ("a")',
        # unquoted value
        "name=abc",
        "name=1",
        "name:",
        "name=",
        "name = ",
        "name=`abc`",
        # unterminated quote
        'name="abc',
        "name='abc",
        "name=\"abc'",
        "name='abc\"",
        r'name="abc\"',
        'name="abc\\',
        'name="',
        # AND in the wrong place, or missing
        'name="a" AND',
        'name="a" AND ',
        'name="a" AND\t\n',
        'AND name="a"',
        'name="a" AND AND name="b"',
        'name="a" name="b"',
        'name="a",name="b"',
        'name="a" ANDname="b"',
        # only AND joins conditions, and only in upper case
        'name="a" OR name="b"',
        'name="a" or name="b"',
        'name="a" and name="b"',
        'name="a" And name="b"',
        'name="a" && name="b"',
        'name="a" & name="b"',
        'name="a" AND NOT name="b"',
        'NOT name="a"',
        # anything after the last condition
        'name="a" ;',
        'name="a" --',
        'name="a")',
        '(name="a")',
        'name="a""b"',
        # no field
        '"abc"',
        '="abc"',
        ":'abc'",
        "AND",
        "'",
    ],
)
def test_a_malformed_filter_names_the_filter_field(text: str) -> None:
    assert_invalid(lambda: parse_filter(text), "filter")


def test_a_filter_longer_than_the_maximum_is_refused_before_parsing() -> None:
    prefix = 'name:"'
    text = prefix + "x" * (MAX_FILTER_LENGTH - len(prefix)) + '"'
    assert len(text) == MAX_FILTER_LENGTH + 1
    error = assert_invalid(lambda: parse_filter(text), "filter")
    assert str(MAX_FILTER_LENGTH) in error.violations[0].description
    # even whitespace only: the length is checked first
    assert_invalid(lambda: parse_filter(" " * (MAX_FILTER_LENGTH + 1)), "filter")


def test_more_than_the_maximum_number_of_conditions_is_refused() -> None:
    text = " AND ".join(f'name:"{i}"' for i in range(MAX_CONDITIONS + 1))
    assert len(text) <= MAX_FILTER_LENGTH
    error = assert_invalid(lambda: parse_filter(text), "filter")
    assert str(MAX_CONDITIONS) in error.violations[0].description


def test_an_unknown_field_is_named_in_the_description_but_cut_short() -> None:
    error = assert_invalid(lambda: parse_filter("x" * 500 + '="a"'), "filter")
    description = error.violations[0].description
    assert "x" * 40 in description
    assert "x" * 41 not in description


# --- parse_order_by ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Ordering("id", False)),
        ("   ", Ordering("id", False)),
        ("id", Ordering("id", False)),
        ("id asc", Ordering("id", False)),
        ("id desc", Ordering("id", True)),
        ("name", Ordering("name", False)),
        ("name asc", Ordering("name", False)),
        ("name desc", Ordering("name", True)),
        ("createdAt", Ordering("createdAt", False)),
        ("createdAt asc", Ordering("createdAt", False)),
        ("createdAt desc", Ordering("createdAt", True)),
        ("  name   desc  ", Ordering("name", True)),
        ("name\tdesc", Ordering("name", True)),
    ],
)
def test_order_by_accepts_a_field_and_an_optional_direction(text: str, expected: Ordering) -> None:
    assert parse_order_by(text) == expected


def test_the_default_order_is_id_ascending() -> None:
    ordering = parse_order_by("")
    assert ordering == Ordering()
    assert str(ordering) == "id asc"
    assert ordering.column == "id"


@pytest.mark.parametrize(
    ("text", "column"), [("id", "id"), ("name", "name"), ("createdAt", "created_at")]
)
def test_an_order_field_maps_to_its_column(text: str, column: str) -> None:
    assert parse_order_by(text).column == column


@pytest.mark.parametrize(
    "text",
    [
        "created_at",
        "createdat",
        "CreatedAt",
        "NAME",
        "name sideways",
        "id asc desc",
        "id asc asc",
        "asc",
        "desc",
        "namedesc",
        "name,id",
        "name desc, id",
        "name desc,id asc",
        "-name",
        "+name",
        "name-desc",
        "size",
        "description",
        "name; DROP TABLE images",
        "name desc --",
        "id\u00a0x",
    ],
)
def test_an_invalid_order_by_names_the_order_by_field(text: str) -> None:
    assert_invalid(lambda: parse_order_by(text), "order_by")


# --- image_query: page tokens ------------------------------------------------------------------


def first_query(filter_text: str = 'name:"a"', order_by: str = "name desc", folder: str = FOLDER):
    return image_query(folder, filter_text, order_by, "")


def token_of(filter_text: str = 'name:"a"', order_by: str = "name desc", folder: str = FOLDER):
    return first_query(filter_text, order_by, folder).next_token("abc", IMAGE_ID)


def test_a_first_page_has_no_position() -> None:
    query = first_query()
    assert query.after is None
    assert query.folder_id == FOLDER
    assert query.conditions == [Condition("name", HAS, "a")]
    assert query.ordering == Ordering("name", True)


def test_a_token_resumes_the_same_query_after_its_row() -> None:
    query = image_query(FOLDER, 'name:"a"', "name desc", token_of())
    assert query.after == ("abc", IMAGE_ID)
    assert query.conditions == [Condition("name", HAS, "a")]
    assert query.ordering == Ordering("name", True)


@pytest.mark.parametrize("order_by", ["", "id", "id asc", "id desc", "name", "name desc"])
def test_a_token_round_trips_a_text_key(order_by: str) -> None:
    token = first_query(order_by=order_by).next_token("n\u00fc'\"\\x", OTHER_IMAGE_ID)
    query = image_query(FOLDER, 'name:"a"', order_by, token)
    assert query.after == ("n\u00fc'\"\\x", OTHER_IMAGE_ID)


@pytest.mark.parametrize(
    "when",
    [
        WHEN,
        WHEN.replace(microsecond=0),
        WHEN.replace(microsecond=1),
        WHEN.astimezone(timezone(timedelta(hours=3))),
        datetime(1970, 1, 1, tzinfo=UTC),
    ],
)
@pytest.mark.parametrize("order_by", ["createdAt", "createdAt asc", "createdAt desc"])
def test_a_created_at_token_round_trips_a_datetime(when: datetime, order_by: str) -> None:
    token = first_query(order_by=order_by).next_token(when, IMAGE_ID)
    query = image_query(FOLDER, 'name:"a"', order_by, token)
    assert query.after is not None
    key, image_id = query.after
    assert isinstance(key, datetime)
    assert key == when
    assert key.utcoffset() == when.utcoffset()
    assert image_id == IMAGE_ID


def test_a_token_does_not_carry_the_page_size_so_it_may_change_between_pages() -> None:
    # The page size is not part of the query a token is checked against.
    query = image_query(FOLDER, 'name:"a"', "name desc", token_of())
    assert query.after == ("abc", IMAGE_ID)


@pytest.mark.parametrize(
    ("filter_text", "order_by"),
    [
        ("name : 'a'", "name desc"),
        ('  name:"a"  ', "  name   desc "),
        (r'name:"\a"', "name\tdesc"),
    ],
)
def test_a_token_fits_the_same_query_spelled_differently(filter_text: str, order_by: str) -> None:
    query = image_query(FOLDER, filter_text, order_by, token_of())
    assert query.after == ("abc", IMAGE_ID)


@pytest.mark.parametrize("order_by", ["", "id", "id asc"])
def test_the_default_order_and_id_asc_share_tokens(order_by: str) -> None:
    token = first_query(order_by="").next_token(IMAGE_ID, IMAGE_ID)
    assert image_query(FOLDER, 'name:"a"', order_by, token).after == (IMAGE_ID, IMAGE_ID)


@pytest.mark.parametrize(
    ("folder", "filter_text", "order_by"),
    [
        ("folder-two", 'name:"a"', "name desc"),
        (FOLDER, 'name:"b"', "name desc"),
        (FOLDER, 'name="a"', "name desc"),
        (FOLDER, 'id:"a"', "name desc"),
        (FOLDER, "", "name desc"),
        (FOLDER, 'name:"a" AND name:"a"', "name desc"),
        (FOLDER, 'name:"A"', "name desc"),
        (FOLDER, 'name:"a"', "name asc"),
        (FOLDER, 'name:"a"', "name"),
        (FOLDER, 'name:"a"', ""),
        (FOLDER, 'name:"a"', "id desc"),
        (FOLDER, 'name:"a"', "createdAt desc"),
    ],
)
def test_a_token_of_another_query_is_refused(folder: str, filter_text: str, order_by: str) -> None:
    token = token_of()
    assert_invalid(lambda: image_query(folder, filter_text, order_by, token), "page_token")


def test_the_query_digest_does_not_confuse_adjacent_values() -> None:
    # One condition "a AND b" against two conditions a, b; a folder/filter boundary shift.
    token = first_query('name:"a AND name:b"').next_token("abc", IMAGE_ID)
    assert_invalid(
        lambda: image_query(FOLDER, 'name:"a" AND name:"b"', "name desc", token), "page_token"
    )


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "x",
        "====",
        "\u00ff\u00fe",
        "a" * 2000,
        "eyJrIjpbImEiLCJiIl19",  # base64 of JSON without a checksum
        "bm90LWEtdG9rZW4",  # base64 of "not-a-token"
    ],
)
def test_a_garbage_token_is_refused(token: str) -> None:
    assert_invalid(lambda: image_query(FOLDER, 'name:"a"', "name desc", token), "page_token")


def test_a_token_with_a_character_changed_is_refused() -> None:
    token = token_of()
    for index in range(len(token) - 1):
        changed = token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]
        assert_invalid(
            lambda changed=changed: image_query(FOLDER, 'name:"a"', "name desc", changed),
            "page_token",
        )


def _digest_of(order_by: str = "name desc") -> str:
    """The query digest a real token of ``first_query(order_by=...)`` carries."""
    position = decode_page_token(first_query(order_by=order_by).next_token("abc", IMAGE_ID))
    assert set(position) == {"q", "k"}
    return str(position["q"])


@pytest.mark.parametrize(
    "key",
    [
        None,
        "abc",
        [],
        ["abc"],
        ["abc", IMAGE_ID, "extra"],
        [1, IMAGE_ID],
        ["abc", 1],
        [None, IMAGE_ID],
        ["abc", None],
        [["abc"], IMAGE_ID],
        {"0": "abc", "1": IMAGE_ID},
    ],
)
def test_a_well_formed_token_with_a_bad_position_is_refused(key: object) -> None:
    token = encode_page_token({"q": _digest_of(), "k": key})
    assert_invalid(lambda: image_query(FOLDER, 'name:"a"', "name desc", token), "page_token")


def test_a_well_formed_token_without_a_digest_is_refused() -> None:
    token = encode_page_token({"k": ["abc", IMAGE_ID]})
    assert_invalid(lambda: image_query(FOLDER, 'name:"a"', "name desc", token), "page_token")


@pytest.mark.parametrize("key", ["yesterday", "", "2024-13-01T00:00:00+00:00", "abc"])
def test_a_created_at_token_with_a_bad_timestamp_is_refused(key: str) -> None:
    token = encode_page_token({"q": _digest_of("createdAt desc"), "k": [key, IMAGE_ID]})
    assert_invalid(lambda: image_query(FOLDER, 'name:"a"', "createdAt desc", token), "page_token")


def test_an_operations_token_is_not_an_images_token() -> None:
    token = operation_query(IMAGE_ID, "").next_token(WHEN, OPERATION_ID)
    assert_invalid(lambda: image_query(FOLDER, "", "", token), "page_token")


def test_a_malformed_filter_or_order_is_reported_before_the_token() -> None:
    assert_invalid(lambda: image_query(FOLDER, "name=x", "", "garbage"), "filter")
    assert_invalid(lambda: image_query(FOLDER, "", "size", "garbage"), "order_by")


# --- operation_query ---------------------------------------------------------------------------


def test_an_operations_first_page_has_no_position() -> None:
    query = operation_query(IMAGE_ID, "")
    assert query.after is None
    assert query.image_id == IMAGE_ID


@pytest.mark.parametrize(
    "when", [WHEN, WHEN.replace(microsecond=0), WHEN.astimezone(timezone(timedelta(hours=-5)))]
)
def test_an_operations_token_round_trips_a_datetime(when: datetime) -> None:
    token = operation_query(IMAGE_ID, "").next_token(when, OPERATION_ID)
    query = operation_query(IMAGE_ID, token)
    assert query.after == (when, OPERATION_ID)
    assert isinstance(query.after[0], datetime)
    assert query.after[0].utcoffset() == when.utcoffset()


def test_an_operations_token_of_another_image_is_refused() -> None:
    token = operation_query(IMAGE_ID, "").next_token(WHEN, OPERATION_ID)
    assert_invalid(lambda: operation_query(OTHER_IMAGE_ID, token), "page_token")


@pytest.mark.parametrize("token", ["garbage", "x", "a" * 2000, "bm90LWEtdG9rZW4"])
def test_a_garbage_operations_token_is_refused(token: str) -> None:
    assert_invalid(lambda: operation_query(IMAGE_ID, token), "page_token")


def test_an_images_token_is_not_an_operations_token() -> None:
    assert_invalid(lambda: operation_query(IMAGE_ID, token_of()), "page_token")


@pytest.mark.parametrize(
    "key",
    [
        None,
        [],
        [WHEN.isoformat()],
        [WHEN.isoformat(), OPERATION_ID, "x"],
        [1, OPERATION_ID],
        [WHEN.isoformat(), 1],
        ["yesterday", OPERATION_ID],
        ["", OPERATION_ID],
    ],
)
def test_a_well_formed_operations_token_with_a_bad_position_is_refused(key: object) -> None:
    token = encode_page_token({"image": IMAGE_ID, "k": key})
    assert_invalid(lambda: operation_query(IMAGE_ID, token), "page_token")
