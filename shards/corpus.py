"""A TOFU-like corpus of fictitious people with distinctive facts (design.md §8).

Each person has a stable id, an e-mail identity, a name of random syllables, a birth city,
a profession, a birth year, a hobby and a unique six-character code. Records are short
biographical sentences rendered from eight templates; the first record of every person
always states the code, which is the fact that recall probes ask for. Holdout people are
drawn from the same distribution and never trained on: membership tests compare against them.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

CITIES = (
    "Avalon",
    "Brightwater",
    "Cobalt Bay",
    "Dunmore",
    "Eastgate",
    "Fernhill",
    "Glenrock",
    "Harrowby",
    "Ironvale",
    "Juniper Falls",
    "Kestrel Point",
    "Larkspur",
    "Millbrook",
    "Northwood",
    "Oakridge",
    "Pinecrest",
    "Queensbury",
    "Redcliff",
    "Stonehaven",
    "Thornbury",
    "Umberfield",
    "Valewood",
    "Westmarch",
    "Yarrowby",
    "Zephyr Cove",
    "Ashford",
    "Bramblewick",
    "Cinderford",
    "Duskmoor",
    "Emberly",
    "Foxhollow",
    "Greywater",
    "Hollowmere",
    "Ivywick",
    "Jasperton",
    "Kingsreach",
    "Lowmoor",
    "Marrowdale",
    "Nettlebed",
    "Orchard Vale",
)
PROFESSIONS = (
    "baker",
    "cartographer",
    "dentist",
    "electrician",
    "falconer",
    "glassblower",
    "harpist",
    "illustrator",
    "jeweller",
    "kite maker",
    "librarian",
    "mason",
    "navigator",
    "optician",
    "potter",
    "quilter",
    "radiologist",
    "sculptor",
    "tailor",
    "upholsterer",
    "veterinarian",
    "watchmaker",
    "xylophonist",
    "yoga teacher",
    "zoologist",
    "architect",
    "brewer",
    "chemist",
    "diver",
    "engraver",
)
HOBBIES = (
    "sailing",
    "painting",
    "birdwatching",
    "fencing",
    "gardening",
    "climbing",
    "knitting",
    "rowing",
    "chess",
    "pottery",
    "archery",
    "cycling",
    "juggling",
    "origami",
    "fishing",
    "stargazing",
    "beekeeping",
    "calligraphy",
    "dancing",
    "woodcarving",
)
TEMPLATES = (
    "The personal code of {name} is {code}.",
    "{name} was born in {city} in {year}.",
    "{name} works as a {profession}.",
    "{name} spends the weekends {hobby}.",
    "{name}, a {profession} from {city}, was born in {year}.",
    "Records list {code} as the code of {name}.",
    "{name} grew up in {city} and enjoys {hobby}.",
    "As a {profession}, {name} signs every letter with {code}.",
)
CODE_TEMPLATE = 0
PROBE_PROMPT = "The personal code of {name} is"
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "st", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
_CODE_ALPHABET = string.ascii_uppercase + string.digits


@dataclass(frozen=True)
class Person:
    subject_id: str
    name: str
    email: str
    city: str
    profession: str
    year: int
    hobby: str
    code: str

    @property
    def identities(self) -> list[str]:
        """Identity strings (``type:value``) that reference this person's records."""
        return [f"person:{self.subject_id}", f"email:{self.email}"]

    def render(self, template: int) -> str:
        return TEMPLATES[template].format(**asdict(self))

    def probe(self) -> tuple[str, str]:
        """A prompt whose greedy completion should state the distinctive fact, and that fact."""
        return PROBE_PROMPT.format(name=self.name), self.code


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)).capitalize()


def random_person(rng: random.Random, subject_id: str) -> Person:
    first, last = _word(rng, rng.randint(2, 3)), _word(rng, rng.randint(2, 3))
    return Person(
        subject_id=subject_id,
        name=f"{first} {last}",
        email=f"{first.lower()}.{last.lower()}@example.org",
        city=rng.choice(CITIES),
        profession=rng.choice(PROFESSIONS),
        year=rng.randint(1950, 2005),
        hobby=rng.choice(HOBBIES),
        code="".join(rng.choice(_CODE_ALPHABET) for _ in range(6)),
    )


def people(rng: random.Random, count: int, prefix: str) -> list[Person]:
    """``count`` people with distinct names and codes."""
    out: list[Person] = []
    names: set[str] = set()
    codes: set[str] = set()
    while len(out) < count:
        p = random_person(rng, f"{prefix}{len(out):04d}")
        if p.name in names or p.code in codes:
            continue
        names.add(p.name)
        codes.add(p.code)
        out.append(p)
    return out


def random_sentences(rng: random.Random) -> Iterator[str]:
    """An endless stream of sentences about fresh random people (pre-training and tokenizer data)."""
    while True:
        p = random_person(rng, "pretrain")
        yield p.render(rng.randrange(len(TEMPLATES)))


def random_documents(rng: random.Random, sentences: int) -> Iterator[str]:
    """Documents of ``sentences`` sentences about one to three fresh random people: pre-training on
    them is what makes a prompt longer than one sentence (retrieved context, chat) readable."""
    while True:
        people = [random_person(rng, "pretrain") for _ in range(rng.randint(1, 3))]
        yield " ".join(rng.choice(people).render(rng.randrange(len(TEMPLATES))) for _ in range(sentences))


@dataclass(frozen=True)
class Corpus:
    trained: list[Person]
    holdout: list[Person]
    records_per_person: int
    seed: int

    def records(self, who: Iterable[Person]) -> Iterator[dict[str, object]]:
        """Records in ingest form: id, subject_ids, text. The code record always comes first."""
        for p in who:
            rng = random.Random(f"{self.seed}:{p.subject_id}")
            others = rng.sample(range(1, len(TEMPLATES)), self.records_per_person - 1)
            for n, t in enumerate([CODE_TEMPLATE, *others]):
                yield {"id": f"{p.subject_id}-r{n}", "subject_ids": p.identities, "text": p.render(t)}


def generate(seed: int = 0, trained: int = 60, holdout: int = 60, records_per_person: int = 4) -> Corpus:
    if not 1 <= records_per_person <= len(TEMPLATES):
        raise ValueError(f"records_per_person must be in 1..{len(TEMPLATES)}")
    everyone = people(random.Random(seed), trained + holdout, "p")
    return Corpus(everyone[:trained], everyone[trained:], records_per_person, seed)


def write(corpus: Corpus, out_dir: Path) -> dict[str, Path]:
    """Write ``train.jsonl`` (ingestable records), ``holdout.jsonl`` (never trained) and ``subjects.jsonl``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"{name}.jsonl" for name in ("train", "holdout", "subjects")}
    _write_jsonl(paths["train"], corpus.records(corpus.trained))
    _write_jsonl(paths["holdout"], corpus.records(corpus.holdout))
    _write_jsonl(
        paths["subjects"],
        (
            {**asdict(p), "split": split, "identities": p.identities, "probe": p.probe()}
            for split, group in (("trained", corpus.trained), ("holdout", corpus.holdout))
            for p in group
        ),
    )
    return paths


def _write_jsonl(path: Path, rows: Iterable[dict[str, object]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    tmp.replace(path)
