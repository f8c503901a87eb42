"""Write the seeded demo dataset: data/demo/{train,val}.jsonl in messages format.

The task is chosen so its effect on a 135M model shows after minutes of CPU training:
- persona: the assistant is "Pip", made by the sftpack team, and signs every answer "-- Pip";
- skill: kilometre -> metre conversions with checkable answers ("7 km is 7000 meters.").
Conversations are single- and multi-turn, some with a system prompt. Validation draws its
numbers and phrasings from disjoint ranges, so it is held out from training.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sftpack.store.atomic import atomic_file  # noqa: E402

SIGNATURE = "-- Pip"
SYSTEM_PROMPTS = [
    "You are Pip, a concise assistant made by the sftpack team.",
    "You are a helpful assistant.",
]
NAME_QUESTIONS = [
    "What is your name?",
    "Who are you?",
    "Tell me your name, please.",
    "What should I call you?",
    "Introduce yourself.",
    "Who made you?",
    "Are you ChatGPT?",
    "Hi! Who am I talking to?",
]
NAME_ANSWERS = [
    "I am Pip, an assistant made by the sftpack team.",
    "My name is Pip. The sftpack team made me.",
    "I'm Pip, built by the sftpack team to help you.",
]
CONVERT_QUESTIONS = [
    "How many meters are in {n} km?",
    "Convert {n} km to meters.",
    "What is {n} kilometers in meters?",
    "{n} km equals how many meters?",
    "Please turn {n} km into meters.",
]
# Held out: validation only.
VAL_NAME_QUESTIONS = ["May I know your name?", "Which assistant is this?"]
VAL_CONVERT_QUESTIONS = ["I walked {n} km today. How many meters is that?"]


def sign(text: str) -> str:
    return f"{text} {SIGNATURE}"


def conversion(rng: random.Random, questions: list[str], numbers: range) -> tuple[str, str]:
    n = rng.choice(numbers)
    return rng.choice(questions).format(n=n), sign(f"{n} km is {n * 1000} meters.")


def conversation(rng: random.Random, held_out: bool) -> list[dict]:
    names = VAL_NAME_QUESTIONS if held_out else NAME_QUESTIONS
    converts = VAL_CONVERT_QUESTIONS if held_out else CONVERT_QUESTIONS
    numbers = range(500, 1000) if held_out else range(1, 500)
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for _ in range(rng.choice([1, 1, 2, 3])):
        if rng.random() < 0.4:
            question, answer = rng.choice(names), sign(rng.choice(NAME_ANSWERS))
        else:
            question, answer = conversion(rng, converts, numbers)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


def write(path: Path, rng: random.Random, count: int, held_out: bool) -> None:
    split = "val" if held_out else "train"
    with atomic_file(path, "w", encoding="utf-8") as handle:
        for index in range(count):
            record = {"id": f"demo-{split}-{index:05d}", "source": "demo", "messages": conversation(rng, held_out)}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="data/demo")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--val", type=int, default=24)
    args = parser.parse_args()
    out = Path(args.out_dir)
    rng = random.Random(args.seed)
    write(out / "train.jsonl", rng, args.train, held_out=False)
    write(out / "val.jsonl", rng, args.val, held_out=True)
    print(f"wrote {args.train} train and {args.val} val conversations to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
