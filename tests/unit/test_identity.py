import pytest

from service.core.errors import InvalidIdentity
from service.core.identity import canonical_identity, subject_hash


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("email:Ada.Lovelace@Example.ORG", "email:ada.lovelace@example.org"),
        ("  EMAIL : ada@example.org ", "email:ada@example.org"),
        ("phone:+44 (20) 7946-0018", "phone:+442079460018"),
        ("phone:0044 20 7946.0018", "phone:+442079460018"),
        ("email:  Ada@Example.org ", "email:ada@example.org"),
        # opaque ids are the controller's keys: byte-exact, or two different people would collide
        ("person:P0001", "person:P0001"),
        ("person:p0001", "person:p0001"),
        ("person: p0001", "person: p0001"),
        ("controller_customer_id:AbC-9", "controller_customer_id:AbC-9"),
    ],
)
def test_canonical_identity(raw, canonical):
    assert canonical_identity(raw) == canonical


@pytest.mark.parametrize(
    "raw",
    [
        "ada@example.org",
        "email:",
        "passport:X1",
        ":x",
        "email:" + "a" * 400,
        "email:no-at-sign",
        "phone:call me",
        "person:a\x00b",
        "email:a\udfff@x.org",
        "controller_customer_id:line\nbreak",
    ],
)
def test_invalid_identities_are_rejected(raw):
    with pytest.raises(InvalidIdentity):
        canonical_identity(raw)


def test_subject_hash_is_keyed_and_normalised():
    k1, k2 = b"k" * 32, b"j" * 32
    assert subject_hash(k1, "email:A@x.org") == subject_hash(k1, "email:a@x.org")
    assert subject_hash(k1, "email:a@x.org") != subject_hash(k2, "email:a@x.org")
    assert len(subject_hash(k1, "email:a@x.org")) == 32
    assert b"a@x.org" not in subject_hash(k1, "email:a@x.org")
