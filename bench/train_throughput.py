"""Training throughput on CPU: sftpack's packed padding-free rows against TRL's default padded
batches, on the same examples, with the same small Llama made from config.

    .venv/bin/python bench/train_throughput.py --packed DIR/<fingerprint> --raw IN.jsonl \
        --tokenizer models/smollm2-135m-instruct --steps 12 --rounds 2

  packed  SFTTrainer(dataset_kwargs={"skip_prepare_dataset": True}, padding_free=True) on the
          packed folder: rows of up to max_length tokens, `--packed-batch` rows per step.
  padded  SFTTrainer(packing=False) on the raw messages of exactly the examples in the packed
          folder (TRL's own preparation, its default collator padding each batch to its
          longest example), `--padded-batch` examples per step (TRL's default 8).

Each side runs `--steps` optimizer steps; the first `--warmup` steps are not timed. Counted per
step, from the batch the loss sees: trained tokens (labels != -100) and real tokens (not
padding). The sides alternate `--rounds` times in this one process; medians are reported.
TRL trains the padded side on prompts too (SmolLM2's template has no generation tags), so
its trained tokens are all its real tokens; the packed side trains on responses only.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from trl_prepare import load_records


def small_model(tokenizer, hidden: int, layers: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config)


def measure(side: str, dataset, tokenizer, args) -> dict:
    import torch
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    steps: list[dict] = []
    marks: list[float] = []

    class Counting(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"]
            real = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else int(labels.numel())
            steps.append({"trained": int((labels != -100).sum()), "real": real, "slots": int(labels.numel())})
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    class Clock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            if not marks:
                marks.append(time.perf_counter())

        def on_step_end(self, *_, **__):
            marks.append(time.perf_counter())

    common = dict(max_steps=args.steps, learning_rate=1e-4, logging_steps=args.steps, save_strategy="no",
                  report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    with tempfile.TemporaryDirectory() as out:
        if side == "packed":
            config = SFTConfig(output_dir=out, per_device_train_batch_size=args.packed_batch, padding_free=True,
                               packing=False, max_length=None, dataset_kwargs={"skip_prepare_dataset": True},
                               remove_unused_columns=False, **common)
        else:
            config = SFTConfig(output_dir=out, per_device_train_batch_size=args.padded_batch, packing=False,
                               max_length=args.max_length, dataset_num_proc=None, **common)
        trainer = Counting(model=small_model(tokenizer, args.hidden, args.layers), args=config,
                           train_dataset=dataset, processing_class=tokenizer, callbacks=[Clock()])
        torch.manual_seed(0)
        trainer.train()
    w = args.warmup
    seconds = marks[-1] - marks[w]
    timed = steps[w:args.steps]
    trained = sum(s["trained"] for s in timed)
    real = sum(s["real"] for s in timed)
    slots = sum(s["slots"] for s in timed)
    return {"side": side, "timed_steps": len(timed), "seconds": round(seconds, 3),
            "trained_tok_s": round(trained / seconds, 1), "real_tok_s": round(real / seconds, 1),
            "padding_share": round(1 - real / slots, 4), "trained_per_step": round(trained / len(timed), 1),
            "real_per_step": round(real / len(timed), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packed", required=True, help="sftpack packed folder")
    parser.add_argument("--raw", required=True, help="the JSONL it was packed from")
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--packed-batch", type=int, default=2)
    parser.add_argument("--padded-batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: stable timings on a shared machine, where spinning OpenMP "
                             "threads lose their core)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    import datasets
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    datasets.disable_caching()
    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    packed = datasets.load_from_disk(args.packed)
    kept = {i for row in packed["example_ids"] for i in row}
    packed = packed.select_columns(["input_ids", "labels", "seq_lengths"])
    with open(args.raw, encoding="utf-8") as handle:
        ids = [json.loads(line).get("id") for line in handle if line.strip()]
    records = [r for r, i in zip(load_records(args.raw), ids) if i in kept]
    raw = datasets.Dataset.from_list(records)
    if all(t is None for t in raw["tools"]):
        raw = raw.remove_columns("tools")
    need = {"packed": args.steps * args.packed_batch, "padded": args.steps * args.padded_batch}
    if len(packed) < need["packed"] or len(raw) < need["padded"]:
        raise SystemExit(f"too few rows/examples for {args.steps} steps: {len(packed)} rows, {len(raw)} examples")

    runs = []
    for _ in range(args.rounds):
        runs.append(measure("padded", raw, tokenizer, args))
        runs.append(measure("packed", packed, tokenizer, args))
    result = {"examples": len(raw), "packed_rows": len(packed), "runs": runs}
    for side in ("padded", "packed"):
        mine = [r for r in runs if r["side"] == side]
        result[side] = {k: statistics.median(r[k] for r in mine)
                        for k in ("trained_tok_s", "real_tok_s", "padding_share", "trained_per_step", "real_per_step")}
    result["speedup_trained"] = round(result["packed"]["trained_tok_s"] / result["padded"]["trained_tok_s"], 3)
    result["speedup_real"] = round(result["packed"]["real_tok_s"] / result["padded"]["real_tok_s"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
