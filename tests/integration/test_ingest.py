import json
import subprocess
import sys

import psycopg
import pytest

from service import app as lethe
from service.core.errors import InvalidCorpus
from shards import corpus


def count(url, table):
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.fixture
def corpus_files(tmp_path):
    return corpus.write(corpus.generate(seed=5, trained=6, holdout=3), tmp_path / "corpus")


def test_ingest_stores_records_and_only_hashed_subjects(settings, empty_db, corpus_files):
    lethe.migrate(empty_db)
    result = lethe.ingest(empty_db, settings, corpus_files["train"])
    assert (result.inserted, result.unchanged) == (24, 0)
    held = lethe.holdings(empty_db)
    assert (held.records, held.subjects, held.purged) == (24, 12, 0)  # two identities per person
    again = lethe.ingest(empty_db, settings, corpus_files["train"])
    assert (again.inserted, again.unchanged) == (0, 24)
    with psycopg.connect(empty_db.url) as conn:
        dump = "\n".join(str(r) for r in conn.execute("SELECT * FROM subjects").fetchall())
    for row in map(json.loads, corpus_files["train"].read_text().splitlines()):
        for identity in row["subject_ids"]:
            assert identity.split(":", 1)[1] not in dump


def test_malformed_corpus_is_rejected_with_line_numbers_and_nothing_written(settings, empty_db, corpus_files, tmp_path):
    lethe.migrate(empty_db)
    lines = corpus_files["train"].read_text().splitlines()
    lines[4] = lines[4][:-5]  # truncated JSON on line 5
    lines[9] = json.dumps({**json.loads(lines[9]), "subject_ids": ["ssn:123"]})  # line 10
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidCorpus) as exc:
        lethe.ingest(empty_db, settings, bad)
    assert [n for n, _ in exc.value.errors] == [5, 10]
    assert count(empty_db.url, "records") == count(empty_db.url, "subjects") == 0


def test_conflicting_reingest_writes_nothing(settings, empty_db, corpus_files, tmp_path):
    lethe.migrate(empty_db)
    first = tmp_path / "first.jsonl"
    lines = corpus_files["train"].read_text().splitlines()
    first.write_text("\n".join(lines[:3]) + "\n")
    lethe.ingest(empty_db, settings, first)
    changed = json.loads(lines[2])
    changed["text"] += " Changed."
    second = tmp_path / "second.jsonl"
    second.write_text("\n".join([*lines[3:8], json.dumps(changed)]) + "\n")
    with pytest.raises(InvalidCorpus) as exc:
        lethe.ingest(empty_db, settings, second)
    assert [n for n, _ in exc.value.errors] == [6]
    assert count(empty_db.url, "records") == 3


def test_cli_reports_bad_lines_and_exits_nonzero(settings, empty_db, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "subject_ids": ["email:a@x.org"], "text": "ok"}\n{"id": "b"}\n')
    env = {"DATABASE_URL": empty_db.url, "LETHE_VAR_DIR": str(settings.var_dir), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "service", "corpus", "ingest", str(bad)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2, proc.stderr
    assert "line 2" in proc.stderr and "nothing was written" in proc.stderr
    assert count(empty_db.url, "records") == 0
