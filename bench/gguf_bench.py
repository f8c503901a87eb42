"""GGUF export measured: export time and size (f16, q8_0), llama.cpp decode speed against
transformers, and greedy agreement over the demo's held-out prompts (bench/GGUF.md).

    make llamacpp demo-data
    .venv/bin/python bench/gguf_bench.py [--model out/runs/demo/final] [--max-new 48]

The model is a full Hugging Face folder (default: the demo run's final/ when it exists, else
models/smollm2-135m-instruct). Prompts are the first user turns of data/demo/val.jsonl, each
rendered with the model's chat template. Greedy decoding on both sides, stopping at <|im_end|>
or --max-new tokens; transformers runs float32, llama.cpp the GGUF; both on 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THREADS = 2


def prompts(tokenizer) -> list[tuple[str, list[int]]]:
    out = []
    for line in (ROOT / "data" / "demo" / "val.jsonl").read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        user = next(m["content"] for m in messages if m["role"] == "user")
        text = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
        out.append((user, tokenizer(text, add_special_tokens=False).input_ids))
    return out


def hf_greedy(model, ids: list[int], stop: int, max_new: int) -> tuple[list[int], float]:
    import torch

    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False, eos_token_id=stop,
                             pad_token_id=stop)[0, len(ids):].tolist()
    return out, time.perf_counter() - started


def llama_greedy(llm, ids: list[int], stop: int, max_new: int) -> tuple[list[int], float]:
    started = time.perf_counter()
    out = []
    for token in llm.generate(ids, temp=0.0, reset=True):
        out.append(token)
        if token == stop or len(out) == max_new:
            break
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo = ROOT / "out" / "runs" / "demo" / "final"
    parser.add_argument("--model", type=Path, default=demo if demo.is_dir() else ROOT / "models" / "smollm2-135m-instruct")
    parser.add_argument("--max-new", type=int, default=48)
    parser.add_argument("--run", nargs="+", default=["f16", "q8_0"], help="the exports llama.cpp runs")
    args = parser.parse_args()

    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftpack.exporting.gguf import write_gguf

    torch.set_num_threads(THREADS)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    cases = prompts(tokenizer)
    print(f"model {args.model}; {len(cases)} prompts; load {os.getloadavg()[0]:.1f}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="gguf-bench-"))
    exports = {}
    for outtype in ("f16", "q8_0"):
        record = write_gguf(args.model, work / outtype / "model.gguf", outtype=outtype, chat_template=None,
                            stop_tokens=["<|im_end|>"], name="demo")
        exports[outtype] = record
        print(f"export {outtype}: {record['seconds']} s, {record['bytes'] / 1e6:.1f} MB", flush=True)

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    hf = [hf_greedy(model, ids, stop, args.max_new) for _, ids in cases]
    rows = {"transformers float32": hf}
    for outtype in args.run:
        llm = Llama(model_path=str(work / outtype / "model.gguf"), n_ctx=1024, n_threads=THREADS, seed=0,
                    verbose=False)
        rows[f"llama.cpp {outtype}"] = [llama_greedy(llm, ids, stop, args.max_new) for _, ids in cases]

    print("\n| runtime | tokens/s (median over prompts) | greedy output identical to transformers | "
          "mean tokens before the first difference |")
    print("|---|---|---|---|")
    for name, results in rows.items():
        speed = statistics.median(len(out) / seconds for out, seconds in results)
        same = sum(out == ref for (out, _), (ref, _) in zip(results, hf))
        prefix = statistics.mean(next((i for i, (a, b) in enumerate(zip(out, ref)) if a != b), min(len(out), len(ref)))
                                 for (out, _), (ref, _) in zip(results, hf))
        print(f"| {name} | {speed:.1f} | {same}/{len(hf)} | {prefix:.1f} |")
    last = f"llama.cpp {args.run[-1]}"
    for (user, _), (ref, _), (got, _) in zip(cases[:3], hf, rows[last]):
        print(f"\n> {user}\ntransformers: {tokenizer.decode(ref, skip_special_tokens=True)!r}"
              f"\n{last}: {tokenizer.decode(got, skip_special_tokens=True)!r}")
    print(f"\nexport records: {json.dumps(exports['f16'], indent=None)}")


if __name__ == "__main__":
    sys.exit(main())
