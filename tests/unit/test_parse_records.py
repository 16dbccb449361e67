import json

import pytest

from service.core.errors import InvalidCorpus
from service.core.records import parse_records

KEY = b"\x01" * 32


def line(**kw):
    row = {"id": "r1", "subject_ids": ["email:a@example.org"], "text": "Ada was born in Avalon."}
    row.update(kw)
    return json.dumps(row)


def test_valid_lines_parse_with_hashes_and_line_numbers():
    recs = parse_records([line(), "", line(id="r2", subject_ids=["email:A@example.org", "person:p1"])], KEY, 1000)
    assert [r.id for r in recs] == ["r1", "r2"]
    assert [r.line for r in recs] == [1, 3]
    assert len(recs[1].subject_hashes) == 2
    assert recs[0].subject_hashes[0] in recs[1].subject_hashes  # identity normalised before hashing


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "not valid JSON"),
        (line(extra="x"), "extra"),
        (line(text=""), "text"),
        (line(subject_ids=[]), "subject_ids"),
        (line(subject_ids=["passport:123"]), "unknown identity type"),
        (line(id="has space"), "id"),
        (line(id=7), "id"),
        (line(text="x" * 2000), "longer than 1000 bytes"),
        (json.dumps(["a", "list"]), "line"),
    ],
)
def test_every_bad_line_is_reported_with_its_number(bad, message):
    with pytest.raises(InvalidCorpus) as exc:
        parse_records([line(id="r0"), bad, line(id="r3")], KEY, 1000)
    assert [n for n, _ in exc.value.errors] == [2]
    assert message in exc.value.errors[0][1]
    assert "line 2" in str(exc.value)


def test_duplicate_ids_and_all_errors_are_listed():
    with pytest.raises(InvalidCorpus) as exc:
        parse_records([line(), line(), "[", line(id="r9", text="")], KEY, 1000)
    assert [n for n, _ in exc.value.errors] == [2, 3, 4]
    assert "already used on line 1" in exc.value.errors[0][1]
