"""GPU check: what `auto` resolves to, packed-row isolation on CUDA, a short bf16 training run.

Run on a CUDA machine from the repo root (tokenizer folder and a packed folder as arguments):
    python bench/gpu_check.py --tokenizer models/smollm2-135m-instruct --packed out/packed/<fp> --out gpu.json
The model is SmolLM2-135M's architecture with random weights (no weights need to travel).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import datasets  # noqa: E402
import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling  # noqa: E402

from sftpack.config.run_config import ModelConfig, build_config  # noqa: E402
from sftpack.training.runtime import resolve_runtime, run  # noqa: E402


def isolation(model, row) -> float:
    """Max |logit difference| between a packed row and its sequences run alone."""
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([row])
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"].cuda(), position_ids=batch["position_ids"].cuda(),
                       use_cache=False).logits[0].float()
        worst, start = 0.0, 0
        for length in row["seq_lengths"]:
            alone = model(input_ids=torch.tensor([row["input_ids"][start:start + length]]).cuda(),
                          use_cache=False).logits[0].float()
            worst = max(worst, (packed[start:start + length] - alone).abs().max().item())
            start += length
    return worst


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--packed", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    runtime = resolve_runtime(ModelConfig(name_or_path=args.tokenizer))
    result["auto_runtime"] = runtime.__dict__

    model_dir = Path(tempfile.mkdtemp()) / "smollm2-random"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.tokenizer))
    model.save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(args.tokenizer).save_pretrained(model_dir)

    rows = datasets.load_from_disk(args.packed)
    row = next(r for r in rows if len(r["seq_lengths"]) >= 3)
    for attn in ("sdpa", "eager"):
        m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation=attn).cuda().eval()
        result[f"isolation_max_abs_logit_diff_bf16_{attn}"] = isolation(m, row)
        del m

    out_dir = Path(tempfile.mkdtemp()) / "run"
    cfg = build_config({
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": args.packed, "validation": None, "max_length": 512},
        "train": {"output_dir": str(out_dir), "max_steps": args.steps, "per_device_train_batch_size": 8,
                  "learning_rate": 5e-4, "logging_steps": 5, "save_strategy": "no", "report_to": "none",
                  "seed": 1, "disable_tqdm": True},
    })
    started = time.time()
    manifest = run(cfg)
    result["train"] = {k: manifest[k] for k in ("status", "steps", "train_loss", "tokens", "runtime", "seconds")}
    result["train"]["wall_seconds"] = round(time.time() - started, 2)
    history = json.loads((out_dir / "final" / "..").resolve().joinpath("sftpack_run.json").read_text())
    result["train"]["health_warnings"] = [w["kind"] for w in history["health_warnings"]]
    result["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
