from shards import corpus


def test_same_seed_same_corpus_and_other_seed_differs():
    a, b, c = corpus.generate(seed=3), corpus.generate(seed=3), corpus.generate(seed=4)
    assert a == b
    assert list(a.records(a.trained)) == list(b.records(b.trained))
    assert a.trained != c.trained


def test_holdout_is_disjoint_from_trained():
    c = corpus.generate(seed=0, trained=60, holdout=60)
    assert len(c.trained) == len(c.holdout) == 60
    for attr in ("subject_id", "name", "email", "code"):
        assert not {getattr(p, attr) for p in c.trained} & {getattr(p, attr) for p in c.holdout}, attr


def test_records_state_each_persons_distinctive_code_first():
    c = corpus.generate(seed=1, trained=5, holdout=5, records_per_person=4)
    rows = list(c.records(c.trained))
    assert len(rows) == 5 * 4
    assert len({r["id"] for r in rows}) == len(rows)
    for p in c.trained:
        mine = [r for r in rows if r["subject_ids"] == p.identities]
        assert len(mine) == 4 and len({r["text"] for r in mine}) == 4
        prompt, fact = p.probe()
        assert mine[0]["text"] == f"{prompt} {fact}."
        assert all(p.name in r["text"] for r in mine)


def test_write_produces_ingestable_jsonl(tmp_path):
    import json

    paths = corpus.write(corpus.generate(seed=2, trained=3, holdout=2), tmp_path)
    train = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    subjects = [json.loads(line) for line in paths["subjects"].read_text().splitlines()]
    assert {tuple(sorted(r)) for r in train} == {("id", "subject_ids", "text")}
    assert [s["split"] for s in subjects].count("holdout") == 2
