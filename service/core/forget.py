"""Forget entries of the closed-model path: keyed hashes of normalised n-grams, never clear text.

A deletion on the retrieval path keeps, for each subject, the HMACs of the n-grams that were
distinctive of the deleted documents (their names, codes and other facts that no remaining
document states). Queries are matched against them to place the confidentiality constraint in
the prompt; answers are matched against them by the leakage gate. Holding the server key, one
can test a guess ("was 'Braizou Tekali' forgotten?"), never list what was forgotten.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Iterable, Iterator

MAX_ORDER = 3  # n-grams of up to three words are stored
HASH_BYTES = 16
_WORD = re.compile(r"[^\W_]+")
# English function words: on their own they identify nobody (whether a term is distinctive is
# otherwise decided against the remaining knowledge base, not by a list).
STOPWORDS = frozenset(
    (
        "a",
        "about",
        "after",
        "all",
        "also",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "been",
        "but",
        "by",
        "can",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "he",
        "her",
        "him",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "no",
        "not",
        "of",
        "on",
        "or",
        "our",
        "she",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "they",
        "this",
        "to",
        "up",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
    )
)


def words(text: str) -> list[str]:
    """Lower-cased NFKC words: letters and digits, everything else separates."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def ngrams(ws: list[str], max_order: int = MAX_ORDER) -> Iterator[str]:
    for n in range(1, max_order + 1):
        for i in range(len(ws) - n + 1):
            yield " ".join(ws[i : i + n])


def candidate_terms(text: str) -> set[str]:
    """N-grams that could identify a person or state a fact: not made of stop words only, and a
    unigram of at least three characters."""
    out = set()
    for g in ngrams(words(text)):
        parts = g.split(" ")
        if all(p in STOPWORDS for p in parts):
            continue
        if len(parts) == 1 and len(g) < 3:
            continue
        out.add(g)
    return out


def term_key(server_key: bytes) -> bytes:
    """A key for this purpose only, derived from the server key (domain separation)."""
    return hmac.new(server_key, b"lethe/kb-forget/v1", hashlib.sha256).digest()


def term_hash(key: bytes, term: str) -> bytes:
    return hmac.new(key, term.encode(), hashlib.sha256).digest()[:HASH_BYTES]


def text_hashes(key: bytes, text: str) -> set[bytes]:
    """Hashes of every n-gram of ``text`` in the two spellings a leak can take: words joined by a
    space, and joined without one (a code split across tokens, "8JT GEV", still matches "8jtgev")."""
    return word_hashes(key, words(text))


def word_hashes(key: bytes, ws: list[str]) -> set[bytes]:
    """``text_hashes`` of already normalised words."""
    out = set()
    for n in range(1, MAX_ORDER + 2):
        for i in range(len(ws) - n + 1):
            part = ws[i : i + n]
            if n <= MAX_ORDER:
                out.add(term_hash(key, " ".join(part)))
            if n > 1:
                out.add(term_hash(key, "".join(part)))
    return out


# The knowledge base's word index (which n-grams another document states) holds keyed hashes of
# words, not words: PostgreSQL's full-text machinery matches phrases of these tokens exactly as it
# matched the words, and a deleted document leaves no word of its own in heap or WAL.
_LETTERS = str.maketrans("0123456789abcdef", "abcdefghijklmnop")  # one plain-word token for the parser


def index_key(server_key: bytes) -> bytes:
    return hmac.new(server_key, b"lethe/kb-index/v1", hashlib.sha256).digest()


def index_words(key: bytes, ws: Iterable[str]) -> str:
    """Each word as a 16-letter token of its keyed hash, space-separated, in order."""
    return " ".join(hmac.new(key, w.encode(), hashlib.sha256).hexdigest()[:16].translate(_LETTERS) for w in ws)


def distinctive(terms: Iterable[str], known_elsewhere: set[str]) -> list[str]:
    """The candidate terms of a subject's documents that no remaining document contains."""
    return sorted(set(terms) - known_elsewhere)


class Gate:
    """Does a text contain a forgotten term? A set of keyed hashes, checked per n-gram."""

    def __init__(self, key: bytes, hashes: Iterable[bytes] = ()) -> None:
        self.key = key
        self.hashes = frozenset(hashes)

    def leaks(self, text: str) -> bool:
        return self.leaks_words(words(text))

    def leaks_words(self, ws: list[str]) -> bool:
        return bool(self.hashes) and not self.hashes.isdisjoint(word_hashes(self.key, ws))


class StreamGate:
    """The gate over a stream of text deltas: text is released only once no forgotten term can
    still be completing at its end (the last ``MAX_ORDER + 1`` words and any partial word are held
    back), so a blocked stream never shows part of a forgotten fact."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.text = ""
        self.released = 0
        self.blocked = False
        self._checked = 0  # words in the text at the last check

    def feed(self, delta: str) -> str:
        """Add ``delta``; return the text that is safe to release now ('' once blocked)."""
        if self.blocked:
            return ""
        self.text += delta
        if self._leaks():
            return ""
        cut = self._safe_end()
        out, self.released = self.text[self.released : cut], max(self.released, cut)
        return out

    def finish(self) -> str:
        """The held-back rest, if the whole text is clean."""
        if self.blocked or self._leaks():
            return ""
        out, self.released = self.text[self.released :], len(self.text)
        return out

    def _leaks(self) -> bool:
        """Check only the n-grams a new or grown word can be part of: appending text only extends
        the last word or adds words, and every n-gram before those was checked already."""
        ws = words(self.text)
        start = max(0, self._checked - 1 - MAX_ORDER)
        self._checked = len(ws)
        self.blocked = self.gate.leaks_words(ws[start:])
        return self.blocked

    def _safe_end(self) -> int:
        spans = [m.start() for m in _WORD.finditer(self.text)]
        hold = MAX_ORDER + 1
        if len(spans) <= hold:
            return self.released
        return max(self.released, spans[-hold])
