"""TRL 1.16's own SFT dataset preparation, as a whole process: a `datasets.Dataset` made from
the same JSONL, an SFTTrainer with a tiny Llama made from config, packing=True,
packing_strategy="bfd", max_length, dataset_num_proc=None, datasets caching off.

    .venv/bin/python bench/trl_prepare.py IN.jsonl --tokenizer models/smollm2-135m-instruct --max-length 1024

What TRL gets: the `messages` column only (id and source dropped; TRL would keep them around
otherwise), with each tool call's `arguments` as a JSON string and `tools` as a JSON string
column (TRL json-loads it), because Arrow needs one type per column. SmolLM2's template
renders neither, so the rendered text is the same as pack's. The template has no
`{% generation %}` tags, so assistant_only_loss cannot be used: TRL trains on the prompt too.

Prints one JSON line: examples, rows, tokens, trained tokens, load_s (JSONL -> Dataset),
prepare_s (SFTTrainer construction, which is where _prepare_dataset runs).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time


def load_records(path: str) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            record = json.loads(line)
            messages = []
            for message in record["messages"]:
                message = dict(message)
                if message.get("tool_calls"):
                    message["tool_calls"] = [
                        {**call, "function": {**call["function"],
                                              "arguments": json.dumps(call["function"].get("arguments"))}}
                        for call in message["tool_calls"]]
                messages.append(message)
            tools = record.get("tools")
            records.append({"messages": messages, "tools": json.dumps(tools) if tools is not None else None})
    return records


def tiny_model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--max-length", type=int, default=1024)
    args = parser.parse_args()

    import datasets
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    datasets.disable_caching()
    datasets.disable_progress_bars()
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    dataset = datasets.Dataset.from_list(load_records(args.input))
    if all(t is None for t in dataset["tools"]):
        dataset = dataset.remove_columns("tools")
    loaded = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(output_dir=out, packing=True, packing_strategy="bfd", max_length=args.max_length,
                           dataset_num_proc=None, report_to=[], assistant_only_loss=False, use_cpu=True)
        trainer = SFTTrainer(model=tiny_model(tokenizer), args=config, train_dataset=dataset,
                             processing_class=tokenizer)
        prepared = time.perf_counter()
        ds = trainer.train_dataset
        lengths = [sum(s) for s in ds["seq_lengths"]]
        labels = ds.with_format("arrow")["labels"]
        import pyarrow.compute as pc
        trained = int(pc.sum(pc.not_equal(pc.list_flatten(labels), -100)).as_py())
    print(json.dumps({"examples": len(dataset), "rows": len(ds), "tokens": sum(lengths), "trained_tokens": trained,
                      "load_s": round(loaded - started, 3), "prepare_s": round(prepared - loaded, 3)}))


if __name__ == "__main__":
    main()
