"""Data keys for crypto-shredding, kept outside PostgreSQL.

Personal text (a training record, a knowledge-base document and its chunks) is stored in
PostgreSQL only sealed: AES-256-GCM under a data key of its own, with the row's identity as
associated data (a ciphertext moved to another row does not open). The keys live here, one file
each, never in the database. Deleting the text destroys its key: every copy of the ciphertext
(heap pages, WAL, a base backup, a replica) becomes unreadable at once, which a DELETE alone
cannot promise for files PostgreSQL writes and recycles on its own schedule.

The directory is a deployment's most sensitive volume after the database: back it up apart from
the database, on a shorter retention (a restored key brings its deleted text back). A KMS or an
HSM implements the same three operations; ``DataKeys`` is the one place to swap.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12


class DataKeys:
    """A directory of data keys: ``<root>/<2 hex>/<uuid hex>``, mode 0600."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key_id: uuid.UUID) -> Path:
        return self.root / key_id.hex[:2] / key_id.hex

    def create(self) -> tuple[uuid.UUID, bytes]:
        """A new key, on disk (fsynced) before it returns: no ciphertext outlives its key's write."""
        key_id, key = uuid.uuid4(), secrets.token_bytes(KEY_BYTES)
        path = self._path(key_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        return key_id, key

    def get(self, key_id: uuid.UUID) -> bytes | None:
        """The key, or None once destroyed."""
        try:
            key = self._path(key_id).read_bytes()
        except FileNotFoundError:
            return None
        return key if len(key) == KEY_BYTES else None

    def destroy(self, key_ids: Iterable[uuid.UUID | None]) -> int:
        """Overwrite, fsync and unlink each key; returns how many existed. Idempotent. (On flash and
        copy-on-write file systems the overwrite is best effort; the unlink is what counts, and the
        volume's own encryption covers the rest: docs/operations.md.)"""
        gone, parents = 0, set()
        for key_id in {k for k in key_ids if k is not None}:
            path = self._path(key_id)
            try:
                fd = os.open(path, os.O_WRONLY)
            except FileNotFoundError:
                continue
            try:
                os.write(fd, bytes(KEY_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
            path.unlink()
            parents.add(path.parent)
            gone += 1
        for d in parents:  # the unlinks themselves durable
            _fsync_dir(d)
        return gone

    def seal(self, text: str, aad: str) -> tuple[uuid.UUID, bytes]:
        """(key id, nonce ‖ ciphertext) of ``text`` under a new key."""
        key_id, key = self.create()
        return key_id, seal_with(key, text, aad)

    def open(self, key_id: uuid.UUID | None, blob: bytes | None, aad: str) -> str | None:
        """The text, or None when it was shredded (no ciphertext, or no key any more)."""
        if key_id is None or blob is None:
            return None
        key = self.get(key_id)
        return None if key is None else open_with(key, bytes(blob), aad)


def seal_with(key: bytes, text: str, aad: str) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, text.encode(), aad.encode())


def open_with(key: bytes, blob: bytes, aad: str) -> str:
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad.encode()).decode()
    except InvalidTag as e:  # a ciphertext on another row, or tampered with: never silently empty
        raise ValueError("sealed text does not open under its key (moved to another row, or altered)") from e


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
