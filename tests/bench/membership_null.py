"""What one never-trained person's membership AUC looks like: the null a per-person bound must respect.

After an exact deletion the deleted person is a true non-member of every served block, as are the
holdout people. So the per-person LOSS AUC (one person's score against the holdout people's) of a
perfectly forgotten person is a draw from the distribution this script measures: the same statistic
for each holdout person against the other holdout people, on the model `make demo` serves (var/,
its served adapter after the background retrain). Printed per statistic: the null's mean and spread,
the share of never-trained people above 0.65, and the two deleted people's values.

    .venv/bin/python tests/bench/membership_null.py [--var var]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from transformers import AutoTokenizer  # noqa: E402

from service import app as lethe  # noqa: E402
from service.config import Settings  # noqa: E402
from service.store import s3t  # noqa: E402
from service.store import serving as serving_store  # noqa: E402
from shards import corpus, mia, train  # noqa: E402

BOUND = 0.65


def texts_of(c: corpus.Corpus, p: corpus.Person, every_template: bool) -> list[str]:
    if every_template:
        return [p.render(t) for t in range(len(corpus.TEMPLATES))]
    return [str(r["text"]) for r in c.records([p])]


def statistics_of(per: dict[str, list[float]], holdout: Sequence[corpus.Person]) -> dict[str, Callable[[str], float]]:
    def record_level(sid: str) -> float:
        others = [x for q in holdout if q.subject_id != sid for x in per[q.subject_id]]
        return mia.auc(per[sid], others)

    def person_level(sid: str) -> float:
        others = [statistics.fmean(per[q.subject_id]) for q in holdout if q.subject_id != sid]
        return mia.auc([statistics.fmean(per[sid])], others)

    return {"person": person_level, "record": record_level}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--var", type=Path, default=ROOT / "var")
    args = ap.parse_args()
    settings = Settings(var_dir=args.var)
    c = settings.generated_corpus()
    model = lethe.base_model(settings, progress=False).path
    with lethe.database(settings) as db, db.connect() as conn:
        served = serving_store.served(conn)
        deleted = {r.rsplit("-", 1)[0] for r in s3t.deleted_records(conn)}  # record ids are <subject>-r<n>
    if served is None or not served.adapter_path:
        sys.exit("nothing served yet: run `make demo` first")
    gone = [p for p in c.trained if p.subject_id in deleted]
    tok = AutoTokenizer.from_pretrained(model)
    base, peft = train.load_base(model).eval(), train.load_peft(model, Path(served.adapter_path))
    print(
        f"served adapter {Path(served.adapter_path).name}; {len(c.holdout)} never-trained people; deleted: {len(gone)}"
    )
    print(f"{'texts':<10} {'score':<11} {'statistic':<9} {'null mean':>9} {'sd':>5} {'> ' + str(BOUND):>7} deleted")
    for every_template in (False, True):
        people = c.holdout + gone
        rows = [(p.subject_id, t) for p in people for t in texts_of(c, p, every_template)]
        texts = [t for _, t in rows]
        ref, got = mia.text_losses(base, tok, texts), mia.text_losses(peft, tok, texts)
        for calibrated in (True, False):
            per: dict[str, list[float]] = {}
            for (sid, _), g, b in zip(rows, got, ref, strict=True):
                per.setdefault(sid, []).append(g - b if calibrated else g)
            for name, stat in statistics_of(per, c.holdout).items():
                null = [stat(p.subject_id) for p in c.holdout]
                above = sum(a > BOUND for a in null)
                print(
                    f"{'8 tmpl' if every_template else 'records':<10} {'calibrated' if calibrated else 'LOSS':<11} "
                    f"{name:<9} {statistics.fmean(null):>9.2f} {statistics.pstdev(null):>5.2f} "
                    f"{above:>3}/{len(null):<3} {', '.join(f'{stat(p.subject_id):.2f}' for p in gone)}"
                )


if __name__ == "__main__":
    main()
