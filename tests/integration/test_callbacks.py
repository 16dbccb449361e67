"""Signed status callbacks to a real HTTP server on loopback: signature, retries, recorded attempts."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import psycopg
import pytest

from service import app as lethe
from service.core.deletions import Principal, Scope, SubmitDeletion

pytestmark = pytest.mark.slow


class Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[bytes, dict[str, str]]]] = []
    calls = 0

    def do_POST(self):
        type(self).calls += 1
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).calls == 1:  # the first delivery fails: it must be retried
            self.send_response(500)
        else:
            type(self).received.append((raw, dict(self.headers)))
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_callbacks_are_signed_retried_and_every_attempt_recorded(empty_db, settings):
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/lethe/status"
    lethe.migrate(empty_db)
    core = lethe.deletions_core(empty_db, settings)
    rid = uuid.uuid4()
    core.submit(
        SubmitDeletion(rid, [("email", "ada@example.org")], status_callback_urls=[url]),
        Principal("t", frozenset({Scope.ADMIN})),
    )
    env = {**os.environ, "DATABASE_URL": empty_db.url, "LETHE_VAR_DIR": str(settings.var_dir)}
    for _ in range(2):  # the failed delivery is retried after its back-off
        proc = subprocess.run(
            [sys.executable, "-m", "service", "worker", "--once"], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        time.sleep(2.5)
    server.shutdown()

    public = lethe.ledger(empty_db, settings).key.public_key()
    statuses = []
    for raw, headers in Receiver.received:
        public.verify(base64.b64decode(headers["X-OpenDSR-Signature"]), raw)  # raises if forged
        doc = json.loads(raw)
        assert doc["subject_request_id"] == str(rid) and "ada@example.org" not in raw.decode()
        statuses.append(doc["request_status"])
    assert sorted(statuses) == ["completed", "in_progress"]
    with psycopg.connect(empty_db.url) as conn:
        attempts = conn.execute(
            "SELECT status, attempt, http_status FROM callback_attempts WHERE deletion_id = %s ORDER BY id", (rid,)
        ).fetchall()
    assert sorted(attempts) == sorted(
        [("in_progress", 1, 500), ("in_progress", 2, 200), ("completed", 1, 200)]
    ) or sorted(attempts) == sorted([("completed", 1, 500), ("completed", 2, 200), ("in_progress", 1, 200)])
