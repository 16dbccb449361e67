"""The closed-model path's forget entries and leakage gate (pure; no database, no upstream)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core import forget
from service.core.errors import InvalidCorpus
from service.core.kb import chunk_text, parse_jsonl

KEY = forget.term_key(b"k" * 32)
DOC = "The personal code of Braizou Tekali is 8JTGEV. Braizou Tekali was born in Avalon in 1987."
ELSEWHERE = "Drusa Mei was born in Avalon in 1990."


def forgotten_gate() -> forget.Gate:
    terms = forget.distinctive(forget.candidate_terms(DOC), forget.candidate_terms(ELSEWHERE))
    return forget.Gate(KEY, [forget.term_hash(KEY, t) for t in terms])


def test_distinctive_terms_keep_names_and_facts_but_not_what_others_also_state():
    terms = set(forget.distinctive(forget.candidate_terms(DOC), forget.candidate_terms(ELSEWHERE)))
    assert {"braizou", "tekali", "braizou tekali", "8jtgev", "1987"} <= terms
    assert "avalon" not in terms and "born in avalon" not in terms  # another document says it too
    assert "the" not in terms and "is" not in terms


def test_the_gate_blocks_forgotten_terms_in_any_spelling_and_passes_others():
    gate = forgotten_gate()
    for leak in ("His code is 8JTGEV!", "braizou", "code: 8jt gev", "8-JT-GEV", "ＢＲＡＩＺＯＵ"):
        assert gate.leaks(leak), leak
    for fine in ("Drusa Mei was born in Avalon in 1990.", "I cannot share that.", ""):
        assert not gate.leaks(fine), fine
    assert not forget.Gate(KEY).leaks("Braizou")  # an empty gate blocks nothing


def test_hashes_are_keyed_so_the_entry_reveals_nothing_without_the_key():
    other = forget.term_key(b"x" * 32)
    assert forget.term_hash(KEY, "braizou") != forget.term_hash(other, "braizou")
    assert not forget.Gate(other, forgotten_gate().hashes).leaks("Braizou Tekali 8JTGEV")
    assert all(len(h) == forget.HASH_BYTES for h in forgotten_gate().hashes)


def _stream(gate: forget.Gate, pieces: list[str]) -> tuple[str, bool]:
    sg = forget.StreamGate(gate)
    out = "".join(sg.feed(p) for p in pieces) + sg.finish()
    return out, sg.blocked


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 6), min_size=1, max_size=40),
    st.sampled_from(["8JTGEV", "8JT GEV", "Braizou Tekali"]),
    st.text(alphabet="abc xyz.,", max_size=30),
)
def test_a_blocked_stream_never_shows_any_part_of_the_fact(cuts, fact, filler):
    """However the upstream splits its tokens, no released prefix contains a piece of the fact."""
    text = f"{filler} the answer is {fact} and more {filler}"
    pieces, i = [], 0
    for c in cuts:
        pieces.append(text[i : i + c])
        i += c
    pieces.append(text[i:])
    out, blocked = _stream(forgotten_gate(), pieces)
    assert blocked
    fact_words = set(forget.words(fact)) | {"8jt", "gev", "8jtgev"}
    assert fact_words.isdisjoint(forget.words(out)), out


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcdefgh ,.", max_size=80), st.lists(st.integers(1, 7), max_size=30))
def test_a_clean_stream_is_released_whole_and_unchanged(text, cuts):
    pieces, i = [], 0
    for c in cuts:
        pieces.append(text[i : i + c])
        i += c
    pieces.append(text[i:])
    out, blocked = _stream(forgotten_gate(), pieces)
    assert not blocked and out == text


def test_chunks_cover_the_text_in_order_and_respect_the_limit():
    text = " ".join(f"Sentence number {i} says something." for i in range(60))
    chunks = chunk_text(text, 120)
    assert all(len(c) <= 120 for c in chunks)
    assert " ".join(chunks) == text
    assert chunk_text("x" * 250, 100) == ["x" * 100, "x" * 100, "x" * 50]


def test_kb_lines_are_validated_all_or_nothing_with_line_numbers():
    good = {"id": "d1", "subject_ids": ["person:p1"], "text": "t", "source": "crm"}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "id": "d2", "source": ""}),
        json.dumps({**good, "subject_ids": ["bogus"], "id": "d3"}),
        json.dumps(good),
    ]
    with pytest.raises(InvalidCorpus) as e:
        parse_jsonl(lines, b"k" * 32, 1000)
    assert [n for n, _ in e.value.errors] == [2, 3, 4, 5]
    assert "already used on line 1" in e.value.errors[-1][1]
    docs = parse_jsonl([json.dumps(good)], b"k" * 32, 1000)
    assert docs[0].id == "d1" and docs[0].subject_hashes and "p1" not in repr(docs[0].subject_hashes)
