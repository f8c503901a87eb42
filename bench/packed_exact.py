"""What training unpacked costs: the same packed rows, the same model, one training step at a time
through the collator each route uses (pipeline/training/isolation.py).

    .venv/bin/python bench/packed_exact.py --packed DIR/<fingerprint> --tokenizer models/smollm2-135m-instruct \
        --families llama qwen3_5_text --steps 6 --rounds 2

  packed    TRL's padding-free collator: a batch of `--batch` rows joined into one row, position_ids
            restarting per sequence (for a family that leaks, e.g. qwen3_5_text on CPU, this side is
            timing only: its sequences see each other; its boundary kwargs are dropped, as the torch
            path of its convolution refuses them)
  unpacked  training.data.UnpackedCollator: the same rows, one sequence per batch row, right-padded,
            with an attention mask (what sftpack trains a leaking family with)

Each step is a forward and backward of the model's own loss on float32, on CPU; the first step of
each side is not timed. Tokens/s counts real tokens (not padding). The sides alternate `--rounds`
times in this one process; medians are reported. Prints one JSON line per family.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def tiny(family: str, tokenizer, hidden: int, layers: int):
    import torch
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    extra = {"qwen3_5_text": {"linear_key_head_dim": 32, "linear_value_head_dim": 32, "linear_num_key_heads": 2,
                              "linear_num_value_heads": 4}}.get(family, {})
    config = CONFIG_MAPPING[family](vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                                    num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                    head_dim=hidden // 4, pad_token_id=tokenizer.pad_token_id, **extra)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").train()


def step_seconds(model, batch) -> float:
    started = time.perf_counter()
    model(**batch, use_cache=False).loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main() -> None:
    import datasets
    import torch
    from transformers import AutoTokenizer

    from sftpack.training.data import PositionIdsCollator, UnpackedCollator

    parser = argparse.ArgumentParser()
    parser.add_argument("--packed", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--families", nargs="+", default=["llama", "qwen3_5_text"])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    rows = datasets.load_from_disk(args.packed).select_columns(["input_ids", "labels", "seq_lengths"])
    batches = [[rows[(s * args.batch + i) % len(rows)] for i in range(args.batch)] for s in range(args.steps + 1)]
    sides = {"packed": PositionIdsCollator(tokenizer.pad_token_id), "unpacked": UnpackedCollator(tokenizer.pad_token_id)}
    for family in args.families:
        model = tiny(family, tokenizer, args.hidden, args.layers)
        rates: dict[str, list[float]] = {side: [] for side in sides}
        shapes = {}
        for _ in range(args.rounds):
            for side, collate in sides.items():
                collated = [collate(b) for b in batches]
                shapes[side] = [list(c["input_ids"].shape) for c in collated[1:]]
                step_seconds(model, collated[0])  # warm-up
                seconds = sum(step_seconds(model, c) for c in collated[1:])
                real = sum(sum(sum(r["seq_lengths"]) for r in b) for b in batches[1:])
                rates[side].append(real / seconds)
        packed, unpacked = statistics.median(rates["packed"]), statistics.median(rates["unpacked"])
        print(json.dumps({"family": family, "hidden": args.hidden, "layers": args.layers, "rows_per_step": args.batch,
                          "packed_tokens_per_s": round(packed, 1), "unpacked_tokens_per_s": round(unpacked, 1),
                          "unpacked_over_packed": round(unpacked / packed, 3),
                          "batch_shapes": {side: shape[:2] for side, shape in shapes.items()}}), flush=True)


if __name__ == "__main__":
    main()
