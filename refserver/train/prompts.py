"""Build the MTP head's training prompts from text available offline, never from held-out prompts.

Sources (licences):
- the Python standard library's own source and docstrings, read from this interpreter's stdlib
  directory with `ast` (Python Software Foundation License 2.0);
- instruction templates, topics and synthetic records written for this project (Apache-2.0).

Each prompt is a chat (`messages`) like the held-out set; the GPU pipeline renders it with the
target's chat template and lets the target answer. Exclusion is strict: a prompt that shares any
8-word sequence with a held-out prompt is dropped (and counted), on top of exact matches.

    python -m refserver.train.prompts --out .carry/mtp/train_prompts.jsonl
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import random
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

HELDOUT_PATH = Path(__file__).resolve().parents[1] / "assets" / "prompts" / "heldout.jsonl"
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

CODE_TASKS = [
    "Explain what this Python function does, step by step:",
    "Add type hints to this function. Show the complete updated code:",
    "Write a docstring for this function and show the full function with it:",
    "Rewrite this function with clearer variable names. Return the full code:",
    "Add short comments to this code explaining each part:",
    "Review this function and point out possible bugs or edge cases:",
    "Write two pytest unit tests for this function:",
    "Summarise in one paragraph what this code is for:",
    "Rewrite this Python code so it is easier to read, without changing its behaviour:",
    "Describe the inputs and the return value of this function:",
    "Convert this Python function into JavaScript:",
    "Simplify this function if possible and show the result:",
]

TEXT_TASKS = [
    "Summarise the following documentation in plain language:",
    "Rewrite this paragraph so a beginner can understand it:",
    "Give a one-sentence summary of this text:",
    "Turn this text into a bulleted list of its key points:",
    "Paraphrase the following passage:",
    "Rewrite this text in a friendlier tone:",
    "Write three questions a reader could answer after reading this:",
    "Shorten this text while keeping the important details:",
    "Explain the following documentation as if to a new programmer:",
    "Correct any spelling errors in the text below and give back the corrected version:",
    "Make this text more concise:",
    "Rewrite the passage below in the passive voice where it makes sense:",
]

OPEN_TEMPLATES = [
    "Explain {topic} in simple terms.",
    "What is {topic}?",
    "Write a short paragraph about {topic}.",
    "Give me three interesting facts about {topic}.",
    "Why is {topic} important?",
    "Write a short poem about {topic}.",
    "Describe {topic} to someone who has never heard of it.",
    "What are the pros and cons of {topic}?",
    "Write a short story that involves {topic}.",
    "How would you teach a child about {topic}?",
    "List some common misconceptions about {topic}.",
    "Write a brief blog post introduction about {topic}.",
    "What questions should I ask to learn more about {topic}?",
    "Summarise the history of {topic} in a few sentences.",
    "Give a short, clear definition of {topic} and an example.",
    "Write a limerick about {topic}.",
    "How does {topic} affect everyday life?",
    "Compare {topic} with {other}.",
    "What should a beginner know about {topic}?",
    "Write a dialogue between two friends talking about {topic}.",
]

TOPICS = [
    "volcanoes",
    "the water cycle",
    "black holes",
    "honeybees",
    "recycling",
    "the moon landing",
    "electric cars",
    "chess",
    "the Roman Empire",
    "vaccines",
    "coral reefs",
    "solar panels",
    "earthquakes",
    "the human heart",
    "bicycles",
    "jazz music",
    "ancient Egypt",
    "penguins",
    "the stock market",
    "machine learning",
    "gardening",
    "the Olympic Games",
    "dinosaurs",
    "clouds",
    "the human brain",
    "climate change",
    "public libraries",
    "the periodic table",
    "sharks",
    "wind turbines",
    "tea",
    "coffee",
    "the Great Wall of China",
    "magnets",
    "glaciers",
    "the immune system",
    "saving money",
    "learning a new language",
    "mountains",
    "deserts",
    "rain forests",
    "octopuses",
    "airplanes",
    "trains",
    "the printing of money",
    "democracy",
    "gravity",
    "friendship",
    "teamwork",
    "time management",
    "public speaking",
    "meditation",
    "chocolate",
    "bread baking",
    "the ocean tides",
    "lightning",
    "snowflakes",
    "owls",
    "the solar system",
    "Mars",
    "telescopes",
    "microscopes",
    "bacteria",
    "the Renaissance",
    "origami",
    "video games",
    "board games",
    "the violin",
    "the piano",
    "photography",
    "databases",
    "recursion",
    "sorting algorithms",
    "binary numbers",
    "encryption",
    "open source software",
    "version control",
    "unit testing",
    "operating systems",
    "compilers",
    "spreadsheets",
    "email etiquette",
    "job interviews",
    "writing a resume",
    "running a marathon",
    "swimming",
    "yoga",
    "healthy breakfasts",
    "drinking enough water",
    "elephants",
    "whales",
    "ants",
    "butterflies",
    "migrating birds",
    "fossils",
    "rivers",
    "bridges",
    "skyscrapers",
    "castles",
    "pyramids",
    "maps",
    "compasses",
    "clocks",
    "the calendar",
    "leap years",
    "fractions",
    "prime numbers",
    "geometry",
    "probability",
    "statistics",
    "the speed of light",
    "sound waves",
    "rainwater harvesting",
    "composting",
    "beekeeping",
    "camping",
    "hiking safety",
    "first aid",
    "fire safety",
    "road safety",
    "volunteering",
    "kindness",
    "curiosity",
    "museums",
    "theatre",
    "poetry",
    "novels",
    "fairy tales",
    "mythology",
    "the alphabet",
    "handwriting",
    "typewriters",
    "radio",
    "television",
    "satellites",
    "GPS",
    "smartphones",
    "batteries",
    "electricity",
    "plastic",
    "glass making",
    "paper",
    "cotton",
    "wool",
    "silk",
    "spices",
    "rice",
    "potatoes",
    "tomatoes",
    "apples",
    "honey",
    "cheese",
    "pizza",
    "soup",
    "festivals",
    "markets",
    "small businesses",
    "banks",
    "taxes",
    "insurance",
    "budgeting",
    "minimalism",
    "habits",
    "motivation",
    "stress",
    "laughter",
    "music lessons",
    "drawing",
    "sculpture",
    "architecture",
]

HOWTO_TEMPLATES = [
    "Give me {n} tips for {activity}.",
    "How can I get better at {activity}?",
    "What are common mistakes people make when {activity}?",
    "Make a simple step-by-step plan for {activity}.",
]
ACTIVITIES = [
    "keeping a tidy desk",
    "learning to cook",
    "saving energy at home",
    "starting to run",
    "reading more books",
    "making friends in a new city",
    "writing clear emails",
    "caring for houseplants",
    "taking better photos",
    "learning to draw",
    "staying safe online",
    "preparing for an exam",
    "giving a presentation",
    "learning to swim",
    "painting a room",
    "packing for a flight",
    "organising a closet",
    "training a puppy",
    "learning guitar",
    "cooking rice",
    "keeping a journal",
    "riding a bike in the city",
    "working from home",
    "writing a short story",
    "baking cookies",
    "reducing food waste",
    "learning to type fast",
]
HOWTO_QUESTIONS = [
    "How do I boil an egg?",
    "How do I make a cup of green tea?",
    "How do I fix a flat bicycle tyre?",
    "How do I write a good cover letter?",
    "How do I start a vegetable garden?",
    "How do I clean a cast iron pan?",
    "How do I make fresh lemonade?",
    "How do I tie a tie?",
    "How do I back up the files on my computer?",
    "How do I make a paper airplane?",
    "How do I prepare a simple tomato sauce?",
    "How do I choose a good password?",
    "How do I start learning to program?",
    "How do I make a budget for a month?",
    "How do I calm down before a job interview?",
    "How do I remove a stain from a shirt?",
    "How do I plant a tree?",
    "How do I make a simple salad dressing?",
]
WRITING_TASKS = [
    "Write a short email to my manager asking for a day off next Friday.",
    "Write a birthday message for my sister.",
    "Write an apology note to a friend for missing their party.",
    "Write a welcome message for new members of a chess club.",
    "Write a short speech to thank volunteers at a charity event.",
    "Write a message inviting my colleagues to a farewell lunch.",
    "Write a product description for a wooden desk lamp.",
    "Write a polite complaint to a landlord about a broken heater.",
    "Write a congratulations card for a friend who got a new job.",
    "Write a short motivational message for a team before a deadline.",
    "Write an announcement that the office will be closed on Monday.",
    "Write a review of a small family restaurant.",
    "Help me plan a birthday party for a seven-year-old.",
    "Help me plan a weekly meal plan for a busy family.",
    "Help me plan a picnic in the park for six people.",
    "Help me plan a study schedule for the next four weeks.",
    "Help me plan a weekend hike in the mountains.",
    "Help me organise a small book club.",
]

OTHER = [
    "a similar idea",
    "its main alternative",
    "something from a hundred years ago",
    "how it works in another country",
]

NAMES = [
    "Ana",
    "Ben",
    "Chen",
    "Dara",
    "Emil",
    "Fatima",
    "Goran",
    "Hana",
    "Ivan",
    "Jun",
    "Kira",
    "Luca",
    "Mina",
    "Noah",
    "Olga",
    "Pavel",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
    "Umar",
    "Vera",
    "Wen",
    "Yara",
    "Zoe",
]
CITIES = [
    "Lisbon",
    "Oslo",
    "Lima",
    "Cairo",
    "Seoul",
    "Dublin",
    "Quito",
    "Prague",
    "Nairobi",
    "Osaka",
    "Perth",
    "Austin",
    "Lyon",
    "Bergen",
    "Kyoto",
    "Porto",
    "Tunis",
    "Hanoi",
]
JOBS = [
    "nurse",
    "pilot",
    "chef",
    "farmer",
    "engineer",
    "teacher",
    "painter",
    "driver",
    "judge",
    "baker",
    "writer",
    "tailor",
]
ITEMS = [
    "pencil",
    "notebook",
    "lamp",
    "chair",
    "kettle",
    "backpack",
    "umbrella",
    "candle",
    "blanket",
    "mug",
    "scissors",
    "stapler",
    "bottle",
    "basket",
    "ruler",
    "mirror",
]
KEYS_FR = {
    "name": "nom",
    "age": "âge",
    "city": "ville",
    "job": "métier",
    "price": "prix",
    "colour": "couleur",
    "quantity": "quantité",
    "email": "courriel",
}
KEYS_ES = {
    "name": "nombre",
    "age": "edad",
    "city": "ciudad",
    "job": "trabajo",
    "price": "precio",
    "colour": "color",
    "quantity": "cantidad",
    "email": "correo",
}


@dataclass(frozen=True)
class Snippets:
    functions: list[str]
    docstrings: list[str]


def stdlib_snippets(root: Path | None = None, max_files: int = 4000) -> Snippets:
    """Functions (4-30 lines) and docstring paragraphs (>= 200 chars) from the stdlib sources."""
    root = root or Path(sysconfig.get_paths()["stdlib"])
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


def build_prompts(
    seed: int = 0, n_code: int = 2600, n_text: int = 2200, n_data: int = 900, n_open: int = 2600
) -> list[dict[str, object]]:
    """All training prompts, deterministic for a given seed and stdlib."""
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
    out = [(k, p) for k, p in out if len(p) <= MAX_CHARS]
    heldout = load_heldout()
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


DERIVED_TEXT_TASKS = [
    "Rewrite the paragraph below using simpler words:",
    "Summarise this passage in two or three sentences:",
    "Please correct the spelling in the following text and output only the fixed text:",
    "Turn the following text into a short bulleted list:",
    "Rewrite this text in a formal, professional tone:",
    "Rewrite this text in a casual, friendly tone:",
    "Cut this text down to about half its length:",
    "Edit this text for grammar and clarity, and give back the edited version:",
    "Rewrite this text so that every sentence is short:",
    "Give this paragraph a title, then repeat the paragraph unchanged:",
    "Rewrite the text below for a ten-year-old reader:",
    "Proofread the passage and return it with the mistakes fixed:",
]


def derived_prompts(answers: list[tuple[str, str]], seed: int = 0) -> list[dict[str, object]]:
    """Second-round prompts whose payload is the target's own earlier answers: text edits on
    its paragraphs and code tasks on its code blocks. `answers` holds (kind, answer text)."""
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    for _kind, text in answers:
        code = re.findall(r"```(?:python)?\n(.*?)```", text, flags=re.S)
        code = [c.strip("\n") for c in code if 80 <= len(c) <= 900]
        if code:
            out.append(
                ("derived-code", f"{rng.choice(CODE_TASKS)}\n\n```python\n{rng.choice(code)}\n```")
            )
            continue
        paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
        paras = [p for p in paras if 150 <= len(p) <= 900 and "```" not in p]
        if paras:
            para = rng.choice(paras)
            task = rng.choice(DERIVED_TEXT_TASKS)
            if "spelling" in task or "mistakes" in task:
                para = _typos(para, rng, rate=0.08)
            out.append(("derived-text", f"{task}\n\n{para}"))
    kept, dropped = exclude_heldout(out, load_heldout())
    log.info(
        "derived prompts: %d kept, %d dropped for overlapping held-out prompts", len(kept), dropped
    )
    return [
        {"id": f"derived-{i}", "kind": k, "messages": [{"role": "user", "content": p}]}
        for i, (k, p) in enumerate(kept)
    ]


def load_heldout(path: Path = HELDOUT_PATH) -> list[str]:
    """The user contents of the held-out prompts."""
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            obj = json.loads(line)
            texts.extend(m["content"] for m in obj["messages"] if m["role"] == "user")
    return texts


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
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
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
