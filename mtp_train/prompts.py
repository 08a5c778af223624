"""Build the MTP head's training prompts from text available offline, never from held-out prompts.

Sources (licences), all committed under `mtp_train/data/` so the prompts are the same whatever
Python runs this:
- `stdlib_snippets.json.gz`: functions and docstring paragraphs of the Python 3.11.7 standard
  library, read with `ast` (Python Software Foundation License 2.0); `--snippets-from DIR`
  rebuilds it from another stdlib folder;
- `prompt_words.json`: instruction templates, topics and synthetic records written for this
  project (Apache-2.0).

Each prompt is a chat (`messages`) like the held-out set; the GPU pipeline renders it with the
target's chat template and lets the target answer. Exclusion is strict: a prompt that shares any
8-word sequence with a held-out prompt is dropped (and counted), on top of exact matches.

    python -m mtp_train.prompts --out .carry/mtp/train_prompts.jsonl
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import logging
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from refserver.heldout import heldout_user_texts

log = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parent / "data"
SNIPPETS_PATH = DATA / "stdlib_snippets.json.gz"
WORDS = json.loads((DATA / "prompt_words.json").read_text(encoding="utf-8"))

NGRAM = 8
MAX_CHARS = 1400  # keeps every prompt well under ~400 tokens

# Skip stdlib parts that are tests, vendored or mostly data.
_SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "site-packages",
    "ensurepip",
    "turtledemo",
    "__pycache__",
    "pydoc_data",
    "encodings",
    "config-3.11-x86_64-linux-gnu",
}

CODE_TASKS = WORDS["CODE_TASKS"]

TEXT_TASKS = WORDS["TEXT_TASKS"]

OPEN_TEMPLATES = WORDS["OPEN_TEMPLATES"]

TOPICS = WORDS["TOPICS"]

# Added for run 3 (more open-ended variety; none of the held-out prompts' topics).
TOPICS_MORE = WORDS["TOPICS_MORE"]

HOWTO_TEMPLATES = WORDS["HOWTO_TEMPLATES"]
ACTIVITIES = WORDS["ACTIVITIES"]
HOWTO_QUESTIONS = WORDS["HOWTO_QUESTIONS"]
WRITING_TASKS = WORDS["WRITING_TASKS"]

OTHER = WORDS["OTHER"]

NAMES = WORDS["NAMES"]
CITIES = WORDS["CITIES"]
JOBS = WORDS["JOBS"]
ITEMS = WORDS["ITEMS"]
KEYS_FR = WORDS["KEYS_FR"]
KEYS_ES = WORDS["KEYS_ES"]


@dataclass(frozen=True)
class Snippets:
    functions: list[str]
    docstrings: list[str]


def stdlib_snippets(path: Path = SNIPPETS_PATH) -> Snippets:
    """The committed snippets (see `extract_snippets`)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        obj = json.load(f)
    return Snippets(obj["functions"], obj["docstrings"])


def extract_snippets(root: Path, max_files: int = 4000) -> Snippets:
    """Functions (4-30 lines) and docstring paragraphs (>= 200 chars) from a stdlib folder."""
    functions: list[str] = []
    docstrings: list[str] = []
    files = sorted(p for p in root.rglob("*.py") if not _SKIP_DIRS & set(p.relative_to(root).parts))
    for path in files[:max_files]:
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (UnicodeDecodeError, SyntaxError, ValueError):
            continue
        lines = source.splitlines()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if 4 <= n <= 30:
                    code = _dedent("\n".join(lines[node.lineno - 1 : node.end_lineno]))
                    if len(code) <= 1100 and "\t" not in code:
                        functions.append(code)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    for para in re.split(r"\n\s*\n", doc):
                        para = " ".join(para.split())
                        if 200 <= len(para) <= 1100 and not para.startswith((">>>", "..")):
                            docstrings.append(para)
    return Snippets(sorted(set(functions)), sorted(set(docstrings)))


def save_snippets(snippets: Snippets, path: Path = SNIPPETS_PATH) -> None:
    """gzip with a fixed mtime, so the same snippets give the same bytes."""
    text = json.dumps({"functions": snippets.functions, "docstrings": snippets.docstrings})
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(text.encode("utf-8"))


def _dedent(code: str) -> str:
    import textwrap

    return textwrap.dedent(code).strip("\n")


def _typos(text: str, rng: random.Random, rate: float = 0.06) -> str:
    """Swap two adjacent letters in a few words, so that 'fix the spelling' has something to fix."""
    words = text.split(" ")
    for i, w in enumerate(words):
        if len(w) > 4 and w.isalpha() and rng.random() < rate:
            j = rng.randrange(1, len(w) - 2)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


def _record(rng: random.Random) -> dict[str, object]:
    return {
        "name": rng.choice(NAMES),
        "age": rng.randint(18, 80),
        "city": rng.choice(CITIES),
        "job": rng.choice(JOBS),
    }


def data_prompts(rng: random.Random, n: int) -> Iterator[str]:
    """Conversions between list / CSV / JSON / Markdown of synthetic records."""
    for _ in range(n):
        kind = rng.randrange(6)
        rows = [_record(rng) for _ in range(rng.randint(3, 7))]
        if kind == 0:
            body = "\n".join(f"* {r['name']} ({r['age']}), {r['job']} in {r['city']}" for r in rows)
            yield f"Turn this list into a JSON array of objects with keys name, age, job, city:\n\n{body}"
        elif kind == 1:
            body = "name,age,city,job\n" + "\n".join(
                f"{r['name']},{r['age']},{r['city']},{r['job']}" for r in rows
            )
            yield f"Convert the CSV below into a Markdown table:\n\n{body}"
        elif kind == 2:
            keys = KEYS_FR if rng.random() < 0.5 else KEYS_ES
            lang = "French" if keys is KEYS_FR else "Spanish"
            obj = {keys[k]: v for k, v in rows[0].items()}
            yield (
                f"The keys of this JSON object are in {lang}. Rename them to English and keep "
                f"the values as they are:\n\n{json.dumps(obj, ensure_ascii=False)}"
            )
        elif kind == 3:
            items = rng.sample(ITEMS, rng.randint(4, 8))
            prices = [f"{rng.randint(1, 40)}.{rng.choice(['00', '50', '99'])}" for _ in items]
            body = "\n".join(f"{i}: {p}" for i, p in zip(items, prices, strict=True))
            yield f"Write this price list as a Python dictionary:\n\n{body}"
        elif kind == 4:
            body = json.dumps(rows, indent=1)
            yield f"Convert this JSON into CSV with a header row:\n\n{body}"
        else:
            body = "\n".join(f"{r['name']} is a {r['job']} from {r['city']}." for r in rows)
            yield f"Sort these sentences alphabetically by the person's name:\n\n{body}"


# ------------------------------------------------------------------------------------------------
# Run 3: short general-English edit tasks and tiny code edits, the kind of "repetitive" request
# the held-out set has (its texts and topics are not used: everything below is template-made for
# this project and passes the same 8-word exclusion).

# Open-ended prompts must not touch the held-out prompts' topics (checked by word, whole words).
HELDOUT_TOPIC_WORDS = tuple(WORDS["HELDOUT_TOPIC_WORDS"])
_HELDOUT_TOPIC_RE = re.compile(
    r"\b(" + "|".join(map(re.escape, HELDOUT_TOPIC_WORDS)) + r")\b", re.I
)


def touches_heldout_topic(text: str) -> bool:
    return _HELDOUT_TOPIC_RE.search(text) is not None


OPEN_TEMPLATES_MORE = WORDS["OPEN_TEMPLATES_MORE"]
WHY_QUESTIONS = WORDS["WHY_QUESTIONS"]
PAIRS = WORDS["PAIRS"]
FOODS = WORDS["FOODS"]
PLACES = WORDS["PLACES"]
THANKS = WORDS["THANKS"]
CHARACTERS = WORDS["CHARACTERS"]
POEM_SUBJECTS = WORDS["POEM_SUBJECTS"]
HEALTH = WORDS["HEALTH"]
SYSTEMS = WORDS["SYSTEMS"]
FOCUS = WORDS["FOCUS"]


def open_prompts_more(rng: random.Random, n: int) -> Iterator[str]:
    """Open-ended questions and writing tasks over TOPICS + TOPICS_MORE and fixed lists."""
    topics = TOPICS + TOPICS_MORE
    fixed = (
        WHY_QUESTIONS
        + [
            f"What are the main differences between {a} and {b}?"
            if b
            else f"What is the difference between {a}?"
            for a, b in PAIRS
        ]
        + [f"How do I make {f} at home?" for f in FOODS]
        + [f"Help me plan a {d}-day trip to {p}." for p in PLACES for d in (2, 3, 4)]
        + [f"Write a thank-you note to {who} who {did}." for who, did in THANKS]
        + [f"Write a short story about {c} who {w}." for c, w in CHARACTERS]
        + [f"Write a short poem about {s}." for s in POEM_SUBJECTS]
        + [f"What are the health benefits of {h}?" for h in HEALTH]
        + [f"Describe in simple terms how {s} works." for s in SYSTEMS]
        + [f"How can {who} stay focused {where}?" for who, where in FOCUS]
    )
    yield from fixed
    for _ in range(max(0, n - len(fixed))):
        t1, t2 = rng.sample(topics, 2)
        tpl = rng.choice(OPEN_TEMPLATES + OPEN_TEMPLATES_MORE)
        yield tpl.format(topic=t1, topic2=t2, other=rng.choice(OTHER), n=rng.choice([3, 4, 5]))


# Tiny functions in the held-out snippets' style (a few lines, plain names), written here.
TINY_FUNCTIONS = WORDS["TINY_FUNCTIONS"]
FUNC_NAMES = WORDS["FUNC_NAMES"]
TINY_CODE_TASKS = WORDS["TINY_CODE_TASKS"]
_FLIPS = [(" > ", " < "), (" < ", " > "), (" += ", " -= "), (" == ", " != "), ("+ 1", "- 1")]


def code_edit_prompts(rng: random.Random, functions: list[str], n: int) -> Iterator[str]:
    """Small code edits: rename a variable, add hints/docstring, fix an injected bug, convert,
    on TINY_FUNCTIONS and on short (<= 10 line) stdlib functions."""
    short = [f for f in functions if f.count("\n") <= 9]
    for _ in range(n):
        if rng.random() < 0.5 or not short:
            code = rng.choice(TINY_FUNCTIONS).format(f=rng.choice(FUNC_NAMES))
        else:
            code = rng.choice(short)
        kind = rng.randrange(3)
        names = sorted({m for m in re.findall(r"\b([a-z_][a-z0-9_]{0,11})\s*[+\-*]?=[^=]", code)})
        if kind == 0 and names:
            old = rng.choice(names)
            new = rng.choice(["total", "count", "value", "result_list", "acc", "current", "tmp"])
            if new != old:
                yield (
                    f"Rename `{old}` to `{new}` everywhere in the code below, then show the "
                    f"updated function:\n\n```python\n{code}\n```"
                )
                continue
        if kind == 1:
            flips = [f for f in _FLIPS if f[0] in code]
            if flips:
                a, b = rng.choice(flips)
                buggy = code.replace(a, b, 1)
                yield (
                    "Something is wrong in the code below. Say briefly what the bug is and show "
                    "the corrected function:"
                    f"\n\n```python\n{buggy}\n```"
                )
                continue
        yield f"{rng.choice(TINY_CODE_TASKS)}\n\n```python\n{code}\n```"


SUBJECTS = WORDS["SUBJECTS"]
SUBJECTS = [s for s in SUBJECTS if not touches_heldout_topic(s)]
VERBS = WORDS["VERBS"]
OBJECTS = WORDS["OBJECTS"]
SENTENCE_TASKS = WORDS["SENTENCE_TASKS"]


def sentence_prompts(rng: random.Random, n: int) -> Iterator[str]:
    """Numbered sentence lists to transform one by one (voice, tense, negation)."""
    for _ in range(n):
        task, voice = rng.choice(SENTENCE_TASKS)
        lines = []
        for i in range(rng.randint(3, 6)):
            s, (past, part), o = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)
            sent = f"{o} was {part} by {s}." if voice == "passive" else f"{s} {past} {o}."
            lines.append(f"{i + 1}. {sent[0].upper()}{sent[1:]}")
        yield f"{task}\n\n" + "\n".join(lines)


EVENTS = WORDS["EVENTS"]
FACT_TEMPLATES = WORDS["FACT_TEMPLATES"]
FACT_TEMPLATES = [f for f in FACT_TEMPLATES if not touches_heldout_topic(f)]
DAYS = WORDS["DAYS"]
PLACES_SMALL = WORDS["PLACES_SMALL"]


def bullet_prompts(rng: random.Random, n: int) -> Iterator[str]:
    """Bullet lists of practical facts to turn into prose (and the reverse tasks)."""
    tasks = [
        "Write these notes as a single paragraph:",
        "Write these notes as a short, friendly announcement:",
        "Combine these points into two or three clear sentences:",
        "Turn these notes into a short email to a group of visitors:",
    ]
    for _ in range(n):
        e = rng.choice(EVENTS)
        facts = rng.sample(FACT_TEMPLATES, rng.randint(4, 6))
        vals = dict(
            e=e,
            h=rng.randint(7, 11),
            m=rng.choice(["00", "15", "30", "45"]),
            p=rng.randint(3, 30),
            a=rng.randint(4, 12),
            d=rng.randint(1, 4),
            g=rng.randint(6, 15),
            h2=rng.randint(15, 18),
            day=rng.choice(DAYS),
            place=rng.choice(PLACES_SMALL),
            c=rng.randint(1, 3),
        )
        body = "\n".join(f"- {f.format(**vals)}" for f in facts)
        yield f"{rng.choice(tasks)}\n\n{body}"


CASUAL_OPENERS = WORDS["CASUAL_OPENERS"]
CASUAL_BODIES = WORDS["CASUAL_BODIES"]
CASUAL_CLOSERS = WORDS["CASUAL_CLOSERS"]
MESSAGE_TASKS = WORDS["MESSAGE_TASKS"]


def message_prompts(rng: random.Random, n: int) -> Iterator[str]:
    """Casual workplace messages to rewrite formally or correct."""
    for _ in range(n):
        parts = [rng.choice(CASUAL_OPENERS) + ","]
        parts += rng.sample(CASUAL_BODIES, rng.randint(1, 3))
        closer = rng.choice(CASUAL_CLOSERS)
        text = ". ".join(parts[1:])
        msg = f"{parts[0]} {text}." + (f" {closer}" if closer else "")
        task = rng.choice(MESSAGE_TASKS)
        if "grammar" in task:
            msg = _typos(msg, rng, rate=0.1)
        yield f"{task}\n\n{msg}"


PRODUCTS = WORDS["PRODUCTS"]
MATERIALS = WORDS["MATERIALS"]
FEATURES = WORDS["FEATURES"]


def product_prompts(rng: random.Random, n: int) -> Iterator[str]:
    """Template product descriptions to shorten, summarise or rewrite."""
    tasks = [
        "Cut this product text down to roughly half:",
        "Rewrite this product description to sound more exciting:",
        "Summarise this product description in one sentence:",
        "Turn this product description into a bulleted list of features:",
        "Rewrite this product description in plain, simple words:",
    ]
    for _ in range(n):
        prod, mat = rng.choice(PRODUCTS), rng.choice(MATERIALS)
        vals = dict(
            w=rng.randint(150, 900),
            k=rng.randint(3, 6),
            y=rng.randint(1, 5),
            mins=rng.choice([15, 30, 60]),
            y2=rng.randint(10, 80),
        )
        feats = " ".join(f.format(**vals) for f in rng.sample(FEATURES, rng.randint(3, 5)))
        yield f"{rng.choice(tasks)}\n\nThis {prod} is made from {mat}. {feats}"


ITEM_TABLES = WORDS["ITEM_TABLES"]
KEY_LANGS = {
    "French": KEYS_FR,
    "Spanish": KEYS_ES,
    "Italian": {"name": "nome", "age": "età", "city": "città", "job": "lavoro", "price": "prezzo"},
    "Portuguese": {"name": "nome", "age": "idade", "city": "cidade", "job": "profissão"},
    "Dutch": {"name": "naam", "age": "leeftijd", "city": "stad", "job": "beroep"},
}


def table_prompts(rng: random.Random, n: int) -> Iterator[str]:
    """More list/CSV/Markdown/JSON conversions with other columns than `data_prompts`."""
    for _ in range(n):
        kind = rng.randrange(3)
        if kind == 0:
            col, (names, attrs) = rng.choice(sorted(ITEM_TABLES.items()))
            rows = rng.sample(names, rng.randint(3, min(6, len(names))))
            body = "\n".join(
                f"{r} - {rng.choice(attrs)} - {rng.randint(1, 40)}.{rng.choice(['00', '50', '25'])}"
                for r in rows
            )
            second = "Colour" if col == "Vegetable" else ("Genre" if col == "Book" else "Material")
            yield (
                f"Make a Markdown table (columns: {col}, {second}, Price) from these lines:"
                f"\n\n{body}"
            )
        elif kind == 1:
            rows = [_record(rng) for _ in range(rng.randint(3, 6))]
            body = "\n".join(f"- {r['name']}, {r['city']}, {r['age']}" for r in rows)
            yield f"Write these people as CSV rows under the header name,city,age:\n\n{body}"
        else:
            lang = rng.choice(sorted(KEY_LANGS))
            keys = KEY_LANGS[lang]
            r = _record(rng)
            obj = {keys[k]: v for k, v in r.items() if k in keys}
            yield (
                f"Rename the {lang} keys of this JSON object to English ones (the values stay as "
                f"they are) and output the JSON:\n\n{json.dumps(obj, ensure_ascii=False)}"
            )


def build_prompts(
    seed: int = 0,
    n_code: int = 1800,
    n_text: int = 1500,
    n_data: int = 900,
    n_open: int = 2600,
    n_edit: int = 6000,
) -> list[dict[str, object]]:
    """All training prompts, deterministic for a given seed and stdlib. `n_edit` is the total of
    the run-3 families (short edits of messages, sentences, notes, products, tables, tiny code),
    and as many again open-ended prompts from `open_prompts_more`."""
    rng = random.Random(seed)
    snip = stdlib_snippets()
    log.info(
        "stdlib: %d functions, %d docstring paragraphs", len(snip.functions), len(snip.docstrings)
    )
    out: list[tuple[str, str]] = []
    for code in rng.sample(snip.functions, min(n_code, len(snip.functions))):
        out.append(("code", f"{rng.choice(CODE_TASKS)}\n\n```python\n{code}\n```"))
    for para in rng.sample(snip.docstrings, min(n_text, len(snip.docstrings))):
        task = rng.choice(TEXT_TASKS)
        if "spelling" in task:
            para = _typos(para, rng)
        out.append(("text", f"{task}\n\n{para}"))
    out.extend(("data", p) for p in data_prompts(rng, n_data))
    for _ in range(n_open):
        tpl = rng.choice(OPEN_TEMPLATES)
        out.append(("open", tpl.format(topic=rng.choice(TOPICS), other=rng.choice(OTHER))))
    for _ in range(n_open // 3):
        tpl = rng.choice(HOWTO_TEMPLATES)
        out.append(
            ("open", tpl.format(n=rng.choice([3, 4, 5, 6, 7]), activity=rng.choice(ACTIVITIES)))
        )
    out.extend(("open", q) for q in HOWTO_QUESTIONS + WRITING_TASKS)
    out.extend(("open", q) for q in open_prompts_more(rng, n_edit))
    share = n_edit // 6
    out.extend(("edit-code", p) for p in code_edit_prompts(rng, snip.functions, 2 * share))
    out.extend(("edit-text", p) for p in sentence_prompts(rng, share // 2))
    out.extend(("edit-text", p) for p in bullet_prompts(rng, share // 2))
    out.extend(("edit-text", p) for p in message_prompts(rng, share))
    out.extend(("edit-text", p) for p in product_prompts(rng, share // 2))
    out.extend(("data", p) for p in table_prompts(rng, share // 2))
    n_before = len(out)
    out = [(k, p) for k, p in out if len(p) <= MAX_CHARS]
    out = [(k, p) for k, p in out if k != "open" or not touches_heldout_topic(p)]
    log.info("%d prompts dropped for length or a held-out open topic", n_before - len(out))
    heldout = heldout_user_texts()
    kept, dropped = exclude_heldout(out, heldout)
    log.info("prompts: %d kept, %d dropped for overlapping held-out prompts", len(kept), dropped)
    rng.shuffle(kept)
    seen: set[str] = set()
    result = []
    for kind, p in kept:
        if p in seen:
            continue
        seen.add(p)
        result.append(
            {
                "id": f"train-{len(result)}",
                "kind": kind,
                "messages": [{"role": "user", "content": p}],
            }
        )
    return result


DERIVED_TEXT_TASKS = WORDS["DERIVED_TEXT_TASKS"]


def derived_prompts(answers: list[tuple[str, str]], seed: int = 0) -> list[dict[str, object]]:
    """Second-round prompts whose payload is the target's own earlier answers: text edits on
    its paragraphs, prose from its bullet lists, code tasks on its code blocks (JavaScript back
    to Python). `answers` holds (kind, answer text); each gives up to two prompts."""
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    for _kind, text in answers:
        made = 0
        blocks = re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S)
        blocks = [(lang, c.strip("\n")) for lang, c in blocks if 80 <= len(c.strip()) <= 900]
        if blocks:
            lang, code = rng.choice(blocks)
            if lang in ("javascript", "js"):
                task = "Translate this JavaScript code into Python:"
            else:
                task = rng.choice(CODE_TASKS + TINY_CODE_TASKS)
            out.append(("derived-code", f"{task}\n\n```{lang or 'python'}\n{code}\n```"))
            made += 1
        bullets = [ln.strip() for ln in text.splitlines() if re.match(r"\s*([-*]|\d+\.) \S", ln)]
        if made < 2 and 3 <= len(bullets) <= 10 and sum(map(len, bullets)) <= 900:
            task = rng.choice(
                [
                    "Write these points as one flowing paragraph:",
                    "Turn this list into a short paragraph of connected sentences:",
                    "Rewrite the list below as prose, in two or three sentences:",
                ]
            )
            out.append(("derived-text", f"{task}\n\n" + "\n".join(bullets)))
            made += 1
        paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
        paras = [p for p in paras if 150 <= len(p) <= 900 and "```" not in p]
        if made < 2 and paras:
            para = rng.choice(paras)
            task = rng.choice(DERIVED_TEXT_TASKS)
            if "spelling" in task or "mistakes" in task:
                para = _typos(para, rng, rate=0.08)
            out.append(("derived-text", f"{task}\n\n{para}"))
    kept, dropped = exclude_heldout(out, heldout_user_texts())
    log.info(
        "derived prompts: %d kept, %d dropped for overlapping held-out prompts", len(kept), dropped
    )
    return [
        {"id": f"derived-{i}", "kind": k, "messages": [{"role": "user", "content": p}]}
        for i, (k, p) in enumerate(kept)
    ]


def _ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def exclude_heldout(prompts: list[tuple[str, str]], heldout: list[str]) -> tuple[list, int]:
    """Drop prompts equal to, or sharing an 8-word sequence with, any held-out prompt."""
    banned = set().union(*(_ngrams(h) for h in heldout))
    exact = {" ".join(h.split()) for h in heldout}
    kept = [
        (k, p) for k, p in prompts if " ".join(p.split()) not in exact and not (_ngrams(p) & banned)
    ]
    return kept, len(prompts) - len(kept)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--snippets-from",
        type=Path,
        default=None,
        metavar="STDLIB_DIR",
        help=f"first rebuild {SNIPPETS_PATH.name} from this stdlib folder",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.snippets_from is not None:
        save_snippets(extract_snippets(args.snippets_from))
        log.info("rebuilt %s from %s", SNIPPETS_PATH, args.snippets_from)
    prompts = build_prompts(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    kinds: dict[str, int] = {}
    for p in prompts:
        kinds[str(p["kind"])] = kinds.get(str(p["kind"]), 0) + 1
    log.info("wrote %d prompts to %s: %s", len(prompts), args.out, kinds)


if __name__ == "__main__":
    main()
