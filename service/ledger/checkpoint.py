"""Signed checkpoints in the C2SP tlog-checkpoint / signed-note format, with Ed25519 (cryptography).

Body: ``<origin>\\n<size>\\n<base64 root>\\n``; signature line: ``— <key name> <base64(key id ‖ sig)>``
where key id = SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4] (0x01: Ed25519).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ED25519 = b"\x01"


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"


def key_id(name: str, public: Ed25519PublicKey) -> bytes:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(name.encode() + b"\n" + ED25519 + raw).digest()[:4]


def sign(cp: Checkpoint, name: str, key: Ed25519PrivateKey) -> str:
    """The signed note: body, blank line, signature line."""
    sig = key.sign(cp.body().encode())
    return f"{cp.body()}\n\u2014 {name} {base64.b64encode(key_id(name, key.public_key()) + sig).decode()}\n"


def open_note(note: str, name: str, public: Ed25519PublicKey) -> Checkpoint:
    """Verify a signed note and parse its checkpoint; raises ValueError if anything is off."""
    return open_note_by(note, [(name, public)])


def open_note_by(note: str, keys: Sequence[tuple[str, Ed25519PublicKey]]) -> Checkpoint:
    """``open_note`` accepting a signature by any of ``keys`` (the current signing key and retired
    ones: checkpoints signed before a key rotation keep verifying)."""
    body, sep, sigs = note.partition("\n\n")
    if not sep:
        raise ValueError("not a signed note")
    body += "\n"
    trusted = {(name, key_id(name, public)): public for name, public in keys}
    for line in sigs.splitlines():
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != "\u2014":
            continue
        blob = base64.b64decode(parts[2])
        public = trusted.get((parts[1], blob[:4]))
        if public is None:
            continue
        try:
            public.verify(blob[4:], body.encode())
        except InvalidSignature as e:
            raise ValueError("checkpoint signature does not verify") from e
        origin, size, root = body.rstrip("\n").split("\n")
        return Checkpoint(origin, int(size), base64.b64decode(root))
    raise ValueError(f"no signature by {', '.join(repr(n) for n, _ in keys)}")


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A PEM public key (a retired signing key's, kept to verify its checkpoints)."""
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """A PEM Ed25519 key from a file (a mounted secret in production); made on first use locally."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(pem)
        tmp.chmod(0o600)
        try:
            path.hardlink_to(tmp)  # never replaces a key another process made first
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def public_pem(key: Ed25519PrivateKey) -> str:
    pub = key.public_key()
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
