"""datasketch against rensa on this repo's real conversations: speed and exactness of MinHash + LSH.

    .venv/bin/python bench/minhash_libraries.py [--copies 10]

Documents: the real datasets' conversations (tests/data/real, all message contents joined), each
as its set of word 3-grams after lowercasing and collapsing punctuation (what `sftpack mix` hashes),
repeated `--copies` times with a suffix word per copy so no two are equal. Planted pairs: each of
300 conversations paired with a variant made by word deletions/insertions/swaps, their exact
Jaccard measured. Reported per library (128 permutations, threshold 0.8): signatures/s, LSH
insert+query/s, the mean absolute error of the estimated Jaccard against the exact one, and the
recall of planted pairs whose exact Jaccard is >= 0.8. Writes bench/MINHASH.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NUM_PERM, THRESHOLD, NGRAM = 128, 0.8, 3
_WORD = re.compile(r"[\W_]+")


def shingles(text: str) -> list[str]:
    words = _WORD.sub(" ", text.lower()).split()
    if len(words) < NGRAM:
        return [" ".join(words)]
    return sorted({" ".join(words[i:i + NGRAM]) for i in range(len(words) - NGRAM + 1)})


def conversations() -> list[str]:
    texts = []
    for path in sorted((REPO / "tests/data/real").glob("*.jsonl.gz")):
        for line in gzip.open(path, "rt", encoding="utf-8"):
            record = json.loads(line)
            if "messages" in record:
                texts.append(" ".join(str(m.get("content") or "") for m in record["messages"]))
            elif "conversations" in record:
                texts.append(" ".join(str(m.get("value") or "") for m in record["conversations"]))
            else:
                texts.append(" ".join(str(record.get(k) or "") for k in ("instruction", "input", "output")))
    return texts


def variant(text: str, rng: random.Random, edits: float) -> str:
    words = text.split()
    for _ in range(max(1, int(len(words) * edits))):
        op = rng.choice("dis")
        i = rng.randrange(len(words)) if words else 0
        if op == "d" and len(words) > 3:
            words.pop(i)
        elif op == "i":
            words.insert(i, rng.choice(("really", "also", "then", "kindly", "indeed")))
        elif len(words) > 1:
            j = rng.randrange(len(words))
            words[i], words[j] = words[j], words[i]
    return " ".join(words)


def exact_jaccard(a: list[str], b: list[str]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb)


def with_rensa(docs: list[list[str]], pairs: list[tuple[list[str], list[str]]]) -> dict:
    from rensa import RMinHash, RMinHashLSH

    start = time.perf_counter()
    hashes = RMinHash.from_token_sets(docs, num_perm=NUM_PERM, seed=0)
    sig = time.perf_counter() - start
    start = time.perf_counter()
    lsh = RMinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, num_bands=16)
    for key, h in enumerate(hashes):
        lsh.query(h)
        lsh.insert(key, h)
    index = time.perf_counter() - start
    estimates, found = [], []
    for a, b in pairs:
        ha, hb = RMinHash.from_token_sets([a, b], num_perm=NUM_PERM, seed=0)
        estimates.append(ha.jaccard(hb))
        probe = RMinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, num_bands=16)
        probe.insert(0, ha)
        found.append(0 in probe.query(hb) and ha.jaccard(hb) >= THRESHOLD)
    return {"sig": sig, "index": index, "estimates": estimates, "found": found}


def with_datasketch(docs: list[list[str]], pairs: list[tuple[list[str], list[str]]]) -> dict:
    from datasketch import MinHash, MinHashLSH

    start = time.perf_counter()
    hashes = MinHash.bulk([[s.encode() for s in d] for d in docs], num_perm=NUM_PERM, seed=0)
    sig = time.perf_counter() - start
    start = time.perf_counter()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    for key, h in enumerate(hashes):
        lsh.query(h)
        lsh.insert(key, h)
    index = time.perf_counter() - start
    estimates, found = [], []
    for a, b in pairs:
        ha, hb = MinHash.bulk([[s.encode() for s in a], [s.encode() for s in b]], num_perm=NUM_PERM, seed=0)
        estimates.append(ha.jaccard(hb))
        probe = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
        probe.insert(0, ha)
        found.append(0 in probe.query(hb) and ha.jaccard(hb) >= THRESHOLD)
    return {"sig": sig, "index": index, "estimates": estimates, "found": found}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=10)
    args = parser.parse_args()
    texts = conversations()
    docs = [shingles(f"{t} copy{c}") for c in range(args.copies) for t in texts]
    rng = random.Random(0)
    sample = rng.sample([t for t in texts if len(t.split()) >= 30], 300)
    pairs = [(shingles(t), shingles(variant(t, rng, rng.choice((0.01, 0.02, 0.04, 0.08))))) for t in sample]
    truth = [exact_jaccard(a, b) for a, b in pairs]
    rows = []
    import datasketch
    import rensa.rensa as rensa_module  # noqa: F401
    from importlib.metadata import version

    for name, fn in (("rensa", with_rensa), ("datasketch", with_datasketch)):
        result = fn(docs, pairs)
        error = sum(abs(e - t) for e, t in zip(result["estimates"], truth)) / len(truth)
        planted = [f for f, t in zip(result["found"], truth) if t >= THRESHOLD]
        rows.append(f"| {name} {version(name)} | {len(docs) / result['sig']:,.0f} | {len(docs) / result['index']:,.0f} "
                    f"| {error:.4f} | {sum(planted)}/{len(planted)} |")
        print(rows[-1], flush=True)
    del datasketch
    out = REPO / "bench" / "MINHASH.md"
    out.write_text(
        "# MinHash libraries on this data\n\n"
        f"`.venv/bin/python bench/minhash_libraries.py --copies {args.copies}`: {len(docs):,} documents (the real "
        f"datasets' conversations x{args.copies}, word {NGRAM}-gram sets), {NUM_PERM} permutations, threshold "
        f"{THRESHOLD}; 300 planted variant pairs (exact Jaccard {min(truth):.2f}-{max(truth):.2f}). "
        f"Python {sys.version.split()[0]}, one process.\n\n"
        "| library | signatures/s | LSH query+insert/s | mean abs. error of estimated Jaccard | planted pairs >= threshold found |\n"
        "| --- | ---: | ---: | ---: | ---: |\n" + "\n".join(rows) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
