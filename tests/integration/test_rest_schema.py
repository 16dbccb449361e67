"""Schemathesis against the published OpenAPI document of a live server: no 5xx, and every
response matches the schema (status code, content type, body). Its CLI is used: its pytest
plugin does not run under pytest 9."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.integration.test_rest_api import api  # noqa: F401  (the live server fixture)

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_api_conforms_to_its_openapi_document(api, tmp_path):  # noqa: F811
    client, keys = api[0], api[1]
    doc = client.get("/openapi.json").json()
    assert {"/v1/deletions", "/v1/deletions/{subject_request_id}", "/v1/ledger/checkpoint"} <= set(doc["paths"])
    cli = Path(sys.executable).with_name("schemathesis")
    proc = subprocess.run(
        [
            str(cli),
            "run",
            f"{client.base_url}/openapi.json",
            "--checks",
            CHECKS,
            "--max-examples",
            "25",
            "--seed",
            "1",
            "-H",
            f"Authorization: Bearer {keys['admin']}",
            "--generation-database",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
