"""gRPC with mutual TLS: a client with a certificate from the configured CA gets in; one without
a certificate (or from another CA) is refused during the handshake."""

from __future__ import annotations

import datetime
import ipaddress

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service import app as lethe
from service.api.grpc.gen.lethe.v1 import deletion_pb2, deletion_pb2_grpc
from service.store.deletions import create_api_key


def _cert(subject: str, issuer_key, issuer_name, key, *, ca: bool = False, san: bool = False):
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return b.sign(issuer_key, hashes.SHA256())


def _pem(obj) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ca(name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return key, subject, _cert(name, key, subject, key, ca=True)


def test_mtls_admits_only_clients_with_a_certificate_from_the_ca(empty_db, settings, tmp_path):
    ca_key, ca_name, ca_cert = _ca("lethe test CA")
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server_cert = _cert("localhost", ca_key, ca_name, server_key, san=True)
    client_cert = _cert("controller", ca_key, ca_name, client_key)
    files = {"ca.pem": _pem(ca_cert), "server.pem": _pem(server_cert), "server.key": _pem(server_key)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    tls = settings.model_copy(
        update={
            "grpc_tls_cert": tmp_path / "server.pem",
            "grpc_tls_key": tmp_path / "server.key",
            "grpc_client_ca": tmp_path / "ca.pem",
        }
    )
    lethe.migrate(empty_db)
    key = create_api_key(empty_db, ["deletions:read"])
    server, port = lethe.grpc_server(empty_db, tls, "127.0.0.1:0")
    server.start()
    try:
        request = deletion_pb2.ListDeletionsRequest(limit=1)
        md = [("authorization", f"Bearer {key}")]
        good = grpc.ssl_channel_credentials(_pem(ca_cert), _pem(client_key), _pem(client_cert))
        with grpc.secure_channel(f"127.0.0.1:{port}", good) as ch:
            assert deletion_pb2_grpc.DeletionServiceStub(ch).ListDeletions(request, metadata=md, timeout=10).items == []
        other_key, other_name, _ = _ca("someone else")
        stranger_key = ec.generate_private_key(ec.SECP256R1())
        stranger = _cert("stranger", other_key, other_name, stranger_key)
        for creds in (
            grpc.ssl_channel_credentials(_pem(ca_cert)),
            grpc.ssl_channel_credentials(_pem(ca_cert), _pem(stranger_key), _pem(stranger)),
        ):
            with grpc.secure_channel(f"127.0.0.1:{port}", creds) as ch, pytest.raises(grpc.RpcError) as exc:
                deletion_pb2_grpc.DeletionServiceStub(ch).ListDeletions(request, metadata=md, timeout=10)
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(grace=1).wait()
