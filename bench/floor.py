"""The preparation floor: read JSONL, render every conversation once with the compiled chat template
(transformers' sandboxed environment, the variables apply_chat_template gives it), and call the
Rust tokenizer's `encode_batch(texts, add_special_tokens=False)` per batch (offsets included, as
exact masks need them). No masks, no packing, nothing written.

    .venv/bin/python bench/floor.py IN.jsonl --tokenizer models/smollm2-135m-instruct

Prints one JSON line: examples, tokens, seconds spent after start-up (encode_s).
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args()

    from transformers.utils.chat_template_utils import _compile_jinja_template

    from sftpack.templates.tokenizer import load_tokenizer

    # pack's own loader: the Rust tokenizer without importing torch, so start-up is the same for both
    tokenizer = load_tokenizer(args.tokenizer)
    # The compiled template and variables that apply_chat_template(tokenize=False) uses.
    template = _compile_jinja_template(tokenizer.get_chat_template())
    variables = dict(tokenizer.special_tokens_map)
    started = time.perf_counter()
    examples = tokens = 0

    backend = tokenizer.backend_tokenizer

    def flush(texts: list[str]) -> int:
        return sum(len(encoding.ids) for encoding in backend.encode_batch(texts, add_special_tokens=False))

    texts: list[str] = []
    with open(args.input, "rb") as handle:
        for raw in handle:
            record = json.loads(raw)
            texts.append(template.render(messages=record["messages"], tools=record.get("tools"),
                                         documents=None, add_generation_prompt=False, **variables))
            if len(texts) == args.batch_size:
                tokens += flush(texts)
                examples += len(texts)
                texts = []
    if texts:
        tokens += flush(texts)
        examples += len(texts)
    print(json.dumps({"examples": examples, "tokens": tokens, "encode_s": round(time.perf_counter() - started, 3)}))


if __name__ == "__main__":
    main()
