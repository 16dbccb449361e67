"""Crypto-shredding's key store: sealed text opens only with its key and its row; destroyed, never."""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core import forget
from service.store.keystore import DataKeys


@settings(max_examples=25, deadline=None)
@given(text=st.text(min_size=0, max_size=200))
def test_sealed_text_opens_with_its_key_and_row_only(tmp_path_factory, text):
    keys = DataKeys(tmp_path_factory.mktemp("keys"))
    key_id, blob = keys.seal(text, "record:r1")
    if len(text.encode()) >= 8:  # (a byte or two can occur in any random string)
        assert text.encode() not in blob  # ciphertext, not the text
    assert keys.open(key_id, blob, "record:r1") == text
    with pytest.raises(ValueError):  # the same ciphertext moved to another row
        keys.open(key_id, blob, "record:r2")


def test_a_destroyed_key_leaves_nothing_to_open_and_destroy_is_idempotent(tmp_path):
    keys = DataKeys(tmp_path)
    (a, blob_a), (b, blob_b) = keys.seal("Ada's code is 7QX", "record:a"), keys.seal("Bo", "record:b")
    path = tmp_path / a.hex[:2] / a.hex
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert keys.destroy([a, None]) == 1
    assert not path.exists() and keys.get(a) is None
    assert keys.open(a, blob_a, "record:a") is None
    assert keys.open(b, blob_b, "record:b") == "Bo"  # another record's key untouched
    assert keys.destroy([a]) == 0


def test_the_word_index_holds_no_word_and_matches_phrases_as_words_did():
    key = forget.index_key(b"k" * 32)
    doc = forget.index_words(key, forget.words("Braizou Tekali was born in Lyon."))
    assert "braizou" not in doc and "lyon" not in doc
    tokens = doc.split(" ")
    assert len(tokens) == 6 and all(t.isalpha() and t.islower() and len(t) == 16 for t in tokens)
    phrase = forget.index_words(key, ["braizou", "tekali"])
    assert phrase == " ".join(tokens[:2])  # a phrase query of the same tokens finds it
    assert forget.index_words(forget.index_key(b"j" * 32), ["braizou"]) != tokens[0]  # keyed
