import psycopg

from service.store.migrate import MIGRATIONS_DIR, applied, migrate


def tables(url):
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_migrating_an_empty_database_twice(empty_db):
    ids = sorted(p.name.removesuffix(".sql") for p in MIGRATIONS_DIR.glob("*.sql") if ".rollback" not in p.name)
    assert migrate(empty_db.url) == ids
    assert {"subjects", "records", "record_subjects"} <= tables(empty_db.url)
    assert migrate(empty_db.url) == []  # second run: nothing pending, nothing fails
    assert applied(empty_db.url) == ids


def test_schema_rejects_inconsistent_rows(empty_db):
    migrate(empty_db.url)
    with psycopg.connect(empty_db.url) as conn:
        for bad in (
            "INSERT INTO records (id, content_hash, text) VALUES ('a', '\\x00', 't')",  # hash too short
            "INSERT INTO records (id, content_hash, text, purged_at) VALUES ('a', sha256('t'), 't', now())",
            "INSERT INTO records (id, content_hash, text, shard) VALUES ('a', sha256('t'), 't', 1)",
        ):
            try:
                with conn.transaction():
                    conn.execute(bad)
            except psycopg.errors.CheckViolation:
                continue
            raise AssertionError(f"accepted: {bad}")
