"""RFC 6962 Merkle tree: the Certificate Transparency test vectors and proof properties."""

from hypothesis import given
from hypothesis import strategies as st

from service.core import merkle

# The leaves and roots used by Certificate Transparency's reference tests.
LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    bytes(range(0x60, 0x70)),
]
ROOTS = {
    1: "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    2: "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    3: "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    4: "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    5: "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    6: "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    7: "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    8: "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}
HASHED = [merkle.leaf_hash(d) for d in LEAVES]


def test_roots_match_the_certificate_transparency_vectors():
    assert merkle.root([]).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    for n, expected in ROOTS.items():
        assert merkle.root(HASHED[:n]).hex() == expected


def test_inclusion_proof_vector():
    proof = merkle.inclusion_proof(0, HASHED)
    assert [p.hex()[:8] for p in proof] == ["96a296d2", "5f083f0a", "6b47aaf2"]


leaves = st.lists(st.binary(max_size=8), min_size=1, max_size=40, unique=True)


@given(leaves, st.data())
def test_every_inclusion_proof_verifies_and_a_wrong_leaf_does_not(data_leaves, data):
    hashed = [merkle.leaf_hash(d) for d in data_leaves]
    i = data.draw(st.integers(0, len(hashed) - 1))
    top = merkle.root(hashed)
    proof = merkle.inclusion_proof(i, hashed)
    assert merkle.verify_inclusion(i, len(hashed), hashed[i], proof, top)
    assert not merkle.verify_inclusion(i, len(hashed), merkle.leaf_hash(b"forged"), proof, top)
    if len(hashed) > 1:
        assert not merkle.verify_inclusion((i + 1) % len(hashed), len(hashed), hashed[i], proof, top)


@given(leaves, st.data())
def test_every_consistency_proof_verifies_and_a_rewritten_history_does_not(data_leaves, data):
    hashed = [merkle.leaf_hash(d) for d in data_leaves]
    m = data.draw(st.integers(1, len(hashed)))
    proof = merkle.consistency_proof(m, hashed)
    old, new = merkle.root(hashed[:m]), merkle.root(hashed)
    assert merkle.verify_consistency(m, len(hashed), old, new, proof)
    if m < len(hashed):
        rewritten = [merkle.leaf_hash(data_leaves[0] + b"!"), *hashed[1:m]]  # the first entry changed
        assert not merkle.verify_consistency(m, len(hashed), merkle.root(rewritten), new, proof)
