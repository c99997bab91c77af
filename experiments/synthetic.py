"""Synthetic task families of the embedded world: small word-level problems with one-word answers.

Each family draws ``{"prompt", "answer", "choices"}`` from a NumPy generator in one of three
phrasings (``variant`` 0, 1, 2). Pretraining and the pool's LoRAs see phrasings 0 and 1; target tasks
use phrasing 2, so a LoRA of the same family is related to a target but never saw its exact form.

Families come in four kinds:
  arithmetic  add, sub, successor, double, max, compare, parity, count (numbers 0–99 are single words)
  lists       first, last
  lexical     sentiment (adjective lexicon), boolean (and/or/not over true/false), echo (repeat a word:
              pretraining only, so that every answer word has been an output before)
  knowledge   color (of a noun), translate (to an invented language), category, antonym — arbitrary
              fixed maps, so only a model or LoRA trained on the family can know them

All text is space-separated words, so the word-level tokenizer round-trips it exactly. Every example
has ``choices`` (the gold plus distractors) so that both evaluation protocols apply.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

NUMBERS = [str(i) for i in range(100)]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple", "brown", "gray"]
CATEGORIES = {
    "animal": ["dog", "cat", "horse", "tiger", "mouse", "eagle", "snake", "whale", "bear", "fox"],
    "plant": ["oak", "rose", "fern", "pine", "tulip", "moss", "cactus", "ivy", "maple", "lily"],
    "tool": ["hammer", "saw", "drill", "wrench", "axe", "chisel", "spade", "rake", "pliers", "file"],
    "food": ["bread", "cheese", "rice", "soup", "apple", "pasta", "bean", "cake", "egg", "plum"],
}
NOUNS = [w for ws in CATEGORIES.values() for w in ws]
ANTONYMS = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("high", "low"), ("light", "dark"),
            ("old", "new"), ("open", "closed"), ("full", "empty"), ("early", "late"), ("hard", "soft"),
            ("wet", "dry"), ("rich", "poor"), ("loud", "quiet"), ("thick", "thin"), ("strong", "weak"),
            ("near", "far"), ("clean", "dirty"), ("sweet", "sour"), ("young", "aged"), ("happy", "sad")]
POSITIVE = ["great", "tasty", "lovely", "friendly", "fresh", "superb", "pleasant", "warm"]
NEGATIVE = ["awful", "bland", "rude", "stale", "dreadful", "noisy", "greasy", "grim"]
SUBJECTS = ["food", "staff", "room", "service", "music", "view", "coffee", "menu"]
ZORG_SYLLABLES = ["bl", "kr", "zu", "ma", "te", "og", "ri", "vo", "sa", "pe", "dr", "ix"]


def _maps(seed: int = 1234) -> dict:
    """The knowledge maps (fixed by ``seed``, part of the world recipe)."""
    rng = np.random.default_rng(seed)
    words = set()
    while len(words) < len(NOUNS):
        words.add("".join(rng.choice(ZORG_SYLLABLES, size=2)) + "k")
    zorg = sorted(words)
    rng.shuffle(zorg)
    return {"color": {n: COLORS[int(rng.integers(len(COLORS)))] for n in NOUNS},
            "translate": dict(zip(NOUNS, zorg)),
            "category": {w: c for c, ws in CATEGORIES.items() for w in ws},
            "antonym": {a: b for a, b in ANTONYMS} | {b: a for a, b in ANTONYMS}}


MAPS = _maps()


def _distract(rng, gold: str, pool: list[str], k: int = 4) -> list[str]:
    others = [w for w in pool if w != gold]
    picks = list(rng.choice(others, size=k - 1, replace=False))
    out = picks + [gold]
    rng.shuffle(out)
    return [str(w) for w in out]


def _num_choices(rng, gold: int) -> list[str]:
    near = [str(v) for v in range(max(0, gold - 6), min(100, gold + 7))]
    return _distract(rng, str(gold), near if len(near) >= 4 else NUMBERS)


def _phrase(variant: int, *forms: str) -> str:
    return forms[variant % len(forms)]


def _add(rng, v):
    a, b = (int(x) for x in rng.integers(0, 50, size=2))
    p = _phrase(v, "what is {a} plus {b} ?", "add {a} and {b} .", "compute the sum of {a} and {b} .")
    return p.format(a=a, b=b), str(a + b), _num_choices(rng, a + b)


def _sub(rng, v):
    a = int(rng.integers(10, 100))
    b = int(rng.integers(0, a))
    p = _phrase(v, "what is {a} minus {b} ?", "subtract {b} from {a} .", "compute {a} take away {b} .")
    return p.format(a=a, b=b), str(a - b), _num_choices(rng, a - b)


def _successor(rng, v):
    a = int(rng.integers(0, 99))
    p = _phrase(v, "what number comes after {a} ?", "give the successor of {a} .", "which number follows {a} ?")
    return p.format(a=a), str(a + 1), _num_choices(rng, a + 1)


def _double(rng, v):
    a = int(rng.integers(0, 50))
    p = _phrase(v, "what is double {a} ?", "multiply {a} by 2 .", "compute twice {a} .")
    return p.format(a=a), str(2 * a), _num_choices(rng, 2 * a)


def _max(rng, v):
    xs = [int(x) for x in rng.choice(100, size=int(rng.integers(3, 6)), replace=False)]
    p = _phrase(v, "which is largest : {xs} ?", "find the maximum of {xs} .", "pick the biggest number in {xs} .")
    return p.format(xs=" ".join(map(str, xs))), str(max(xs)), _distract(rng, str(max(xs)), list(map(str, xs)),
                                                                          min(4, len(xs)))


def _min(rng, v):
    xs = [int(x) for x in rng.choice(100, size=int(rng.integers(3, 6)), replace=False)]
    p = _phrase(v, "which is smallest : {xs} ?", "find the minimum of {xs} .", "pick the lowest number in {xs} .")
    return p.format(xs=" ".join(map(str, xs))), str(min(xs)), _distract(rng, str(min(xs)), list(map(str, xs)),
                                                                          min(4, len(xs)))


def _compare(rng, v):
    a, b = (int(x) for x in rng.choice(100, size=2, replace=False))
    p = _phrase(v, "is {a} greater than {b} ?", "{a} is more than {b} . true ?", "tell me if {a} exceeds {b} .")
    return p.format(a=a, b=b), "yes" if a > b else "no", ["yes", "no"]


def _parity(rng, v):
    a = int(rng.integers(0, 100))
    p = _phrase(v, "is {a} even or odd ?", "say whether {a} is even or odd .", "parity of {a} : even or odd ?")
    return p.format(a=a), "even" if a % 2 == 0 else "odd", ["even", "odd"]


def _count(rng, v):
    target = str(rng.choice(COLORS[:4]))
    xs = [str(w) for w in rng.choice(COLORS[:4], size=int(rng.integers(3, 9)))]
    p = _phrase(v, "how many times does {t} appear in : {xs} ?", "count the word {t} in : {xs} .",
                "number of {t} in the list {xs} ?")
    n = xs.count(target)
    return p.format(t=target, xs=" ".join(xs)), str(n), _distract(rng, str(n), NUMBERS[:10])


def _position(word: str, index: int):
    """A family asking for the word at ``index`` of a list (first / second / last)."""
    def family(rng, v):
        xs = [str(w) for w in rng.choice(NOUNS, size=int(rng.integers(3, 7)), replace=False)]
        p = _phrase(v, f"what is the {word} word : {{xs}} ?", f"repeat the {word} word of : {{xs}} .",
                    f"which word comes {word} in : {{xs}} ?")
        return p.format(xs=" ".join(xs)), xs[index], _distract(rng, xs[index], xs, min(4, len(xs)))
    return family


_first, _second, _last = _position("first", 0), _position("second", 1), _position("last", -1)


def _sentiment(rng, v):
    good = bool(rng.integers(2))
    adjs = [str(w) for w in rng.choice(POSITIVE if good else NEGATIVE, size=2, replace=False)]
    s1, s2 = (str(w) for w in rng.choice(SUBJECTS, size=2, replace=False))
    review = f"the {s1} was {adjs[0]} and the {s2} was {adjs[1]}"
    p = _phrase(v, "review : {r} . positive or negative ?", "is this review positive or negative : {r} .",
                "classify the review {r} as positive or negative .")
    return p.format(r=review), "positive" if good else "negative", ["positive", "negative"]


def _boolean(rng, v):
    a, b = (bool(x) for x in rng.integers(2, size=2))
    op = str(rng.choice(["and", "or"]))
    neg = bool(rng.integers(2))
    expr = f"{'not ' if neg else ''}{str(a).lower()} {op} {str(b).lower()}"
    lhs = (not a) if neg else a
    val = (lhs and b) if op == "and" else (lhs or b)
    p = _phrase(v, "evaluate : {e} .", "what is {e} ?", "is the expression {e} true or false ?")
    return p.format(e=expr), str(val).lower(), ["true", "false"]


def _echo(rng, v):
    w = str(rng.choice(ECHO_WORDS))
    p = _phrase(v, "say {w} .", "repeat the word {w} .", "echo {w} please .")
    return p.format(w=w), w, _distract(rng, w, ECHO_WORDS)


def _knowledge(kind: str, forms: tuple[str, ...]) -> Callable:
    table = MAPS[kind]
    keys = sorted(table)
    answers = sorted(set(table.values()))

    def draw(rng, v, only=None):
        w = str(rng.choice(sorted(only) if only else keys))
        return _phrase(v, *forms).format(w=w), table[w], _distract(rng, table[w], answers)
    return draw


ECHO_WORDS = sorted(set(NUMBERS) | set(COLORS) | set(NOUNS) | set(CATEGORIES) | set(MAPS["translate"].values())
                    | {w for pair in ANTONYMS for w in pair} | {"true", "false", "yes", "no", "even", "odd"})
FAMILIES: dict[str, Callable] = {
    "add": _add, "sub": _sub, "successor": _successor, "double": _double, "max": _max, "compare": _compare,
    "parity": _parity, "count": _count, "first": _first, "last": _last, "min": _min, "second": _second,
    "sentiment": _sentiment,
    "boolean": _boolean, "echo": _echo,
    "color": _knowledge("color", ("what color is the {w} ?", "name the color of the {w} .",
                                  "the {w} has which color ?")),
    "translate": _knowledge("translate", ("translate {w} to zorg .", "what is {w} in zorg ?",
                                          "give the zorg word for {w} .")),
    "category": _knowledge("category", ("is the {w} an animal , plant , tool or food ?",
                                        "what kind of thing is the {w} ?", "the {w} belongs to which category ?")),
    "antonym": _knowledge("antonym", ("what is the opposite of {w} ?", "give the antonym of {w} .",
                                      "which word means the reverse of {w} ?")),
}
KNOWLEDGE = ("color", "translate", "category", "antonym")


def examples(family: str, n: int, seed: int, variants: tuple[int, ...] = (0, 1), keys=None,
             exclude: frozenset = frozenset()) -> list[dict]:
    """``n`` examples of ``family``, phrasing drawn from ``variants``; deterministic in ``seed``.
    ``keys`` restricts a knowledge family to those words; prompts in ``exclude`` are never drawn."""
    rng = np.random.default_rng(seed)
    draw = FAMILIES[family]
    out, tries = [], 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise ValueError(f"family {family}: cannot draw {n} examples outside the {len(exclude)} excluded prompts")
        v = int(rng.choice(variants))
        p, a, c = draw(rng, v, keys) if family in KNOWLEDGE else draw(rng, v)
        if p not in exclude:
            out.append({"prompt": p, "answer": a, "choices": c})
    return out


def knowledge_keys(family: str) -> list[str]:
    return sorted(MAPS[family])


def vocabulary() -> list[str]:
    """Every word any family can emit (sorted), found by drawing many examples of every phrasing."""
    words = set(NUMBERS) | set(COLORS) | set(NOUNS) | set(CATEGORIES) | set(POSITIVE) | set(NEGATIVE)
    words |= set(SUBJECTS) | {w for pair in ANTONYMS for w in pair} | set(MAPS["translate"].values())
    words |= {"true", "false", "yes", "no", "even", "odd", "positive", "negative"}
    for fam in FAMILIES:
        for ex in examples(fam, 300, seed=0, variants=(0, 1, 2)):
            words |= set(ex["prompt"].split()) | {ex["answer"]} | set(ex["choices"])
    return sorted(words)
