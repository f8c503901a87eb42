"""Fixes from the review of the packed-exact, PEFT, FSDP2 and export merges: each test failed before its fix."""

from __future__ import annotations

import pytest

from sftpack.config.run_config import build_config
from sftpack.errors import SftpackError


def _adapter_config(quantization: dict) -> dict:
    return {"model": {"name_or_path": "models/smollm2-135m-instruct", "quantization": quantization},
            "data": {"train": "no-such-data.jsonl"}, "train": {"output_dir": "out"}, "peft": {"r": 4}}


@pytest.mark.parametrize("quantization, says", [
    ({"load_in_4bit": True, "llm_int8_threshold": 6}, "llm_int8_threshold must be a float"),
    ({"load_in_4bit": True, "load_in_8bit": True}, "only one can be used"),
    ({"load_in_4bit": True, "bnb_4bit_compute_dtype": "float33"}, "float33"),
])
def test_quantization_values_bitsandbytes_refuses_stop_train_before_any_work(quantization, says):
    """A value BitsAndBytesConfig refuses stops train (and sanity) first, naming model.quantization: it
    was a TypeError or AttributeError traceback, or 'model.name_or_path: cannot load', after the data work
    (data.train here does not exist: reading it would be a different error)."""
    from sftpack.training.sanity import run as sanity
    from sftpack.training.stage import run as train

    for run in (train, sanity):
        with pytest.raises(SftpackError, match="model.quantization: transformers BitsAndBytesConfig refuses it") as err:
            run(build_config(_adapter_config(quantization)))
        assert says in str(err.value)


def test_plan_reads_any_config_its_parameter_count_reads(tmp_path, capsys):
    """`sftpack plan --model` on GPT-2's names (n_embd, n_head) and on a Mamba model (no attention heads)
    plans, the memory estimate from the config's dims or, lacking heads, from the size with a note;
    both died of KeyError: 'num_attention_heads' once plan estimated memory."""
    from transformers import GPT2Config, MambaConfig

    from sftpack.cli import main as cli

    for name, config in {"gpt2": GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=256, bos_token_id=0,
                                            eos_token_id=0),
                         "mamba": MambaConfig(hidden_size=64, num_hidden_layers=2, vocab_size=256)}.items():
        config.save_pretrained(tmp_path / name)
        assert cli(["plan", "--model", str(tmp_path / name), "--examples", "100", "--gpu-memory", "80"]) == 0
        out = capsys.readouterr().out
        assert "memory per GPU" in out and "method: full" in out
        assert ("has no num_attention_heads" in out) == (name == "mamba")


def test_plan_notes_a_model_that_trains_unpacked(tmp_path, capsys):
    """`plan` runs train's own probe (training.isolation.for_run): LFM2's short convolutions leak across
    packed rows on this CPU, so the plan says it trains unpacked and what to install; Llama gets no note."""
    from transformers import Lfm2Config, LlamaConfig

    from sftpack.cli import main as cli

    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256, max_position_embeddings=1024)
    Lfm2Config(**small, full_attn_idxs=[1], block_auto_adjust_ff_dim=False).save_pretrained(tmp_path / "lfm2")
    LlamaConfig(**small, head_dim=16).save_pretrained(tmp_path / "llama")
    assert cli(["plan", "--model", str(tmp_path / "lfm2"), "--examples", "100"]) == 0
    out = capsys.readouterr().out
    assert "model type lfm2 with sdpa attention trains UNPACKED on this machine" in out
    assert "to train packed, install causal-conv1d (pip install causal-conv1d) on a CUDA GPU" in out
    assert cli(["plan", "--model", str(tmp_path / "llama"), "--examples", "100"]) == 0
    assert "UNPACKED" not in capsys.readouterr().out


def test_export_to_a_gguf_path_that_is_a_folder_is_refused_before_any_work(tiny_model_dir, tmp_path):
    """`--format gguf --out x.gguf` where x.gguf is a folder (what `make export` made before
    --out FILE.gguf wrote a file): refused up front naming it, not after the merge (a traceback from
    the rename over a folder, or an unrelated refusal). The folder is left as it was."""
    from sftpack.exporting.stage import ExportConfig
    from sftpack.exporting.stage import run as export

    stale = tmp_path / "demo.gguf"
    (stale / "demo.gguf").mkdir(parents=True)
    with pytest.raises(SftpackError, match=r"--out .*demo.gguf: a folder, not a GGUF file"):
        export(tiny_model_dir, stale, ExportConfig(format="gguf"))
    assert [p.name for p in tmp_path.iterdir()] == ["demo.gguf"] and [p.name for p in stale.iterdir()] == ["demo.gguf"]


def _adapter_on(base_dir, name_or_path: str, out):
    """A LoRA adapter folder on `base_dir`'s model whose adapter_config.json names `name_or_path`, as a
    run on that model saves it (with the tokenizer), its lora_B moved off zero so merging changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    model.name_or_path = model.config._name_or_path = name_or_path
    adapted = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    adapted.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return adapted.eval()


def test_export_merges_an_adapter_on_a_hub_model(tiny_model_dir, tmp_path, capsys):
    """An adapter trained on a hub model (model.name_or_path=org/name, as the README's GPU section runs)
    names that hub id as its base; export loads it from the Hugging Face cache and merges. It was refused
    as 'not found' because the id is not a folder."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    import torch
    from transformers import AutoModelForCausalLM

    cache = tmp_path / "hub"
    snapshot = cache / "models--sftpack-test--tiny-llama" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    adapted = _adapter_on(tiny_model_dir, "sftpack-test/tiny-llama", tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        "sftpack-test/tiny-llama"
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "sftpack", "export", str(tmp_path / "adapter"), "--out",
                           str(tmp_path / "merged")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "merged" / "export.json").read_text())
    assert manifest["method"] == "adapter" and manifest["base_model"] == "sftpack-test/tiny-llama"
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ids = torch.tensor([[1, 42, 7, 99, 5]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, atol=1e-4, rtol=1e-4)
    # Here, in this process, the hub cache is the default one, which lacks it: a clear refusal
    from sftpack.cli import main as cli

    assert cli(["export", str(tmp_path / "adapter"), "--out", str(tmp_path / "again")]) != 0
    assert "base model sftpack-test/tiny-llama not found" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()


def test_plan_method_is_full_when_full_fits_sharded(tmp_path, capsys):
    """7B on 8 GPUs of 60 GiB: a replica does not fit but FSDP2 shards do, so the plan's method is full
    (README: "full when full fits") with the FSDP accelerate config, and the written run config has no
    peft section (on 20 GiB, with activation checkpointing). The method counted replicas only: lora,
    written beside an FSDP config sized for full fine-tuning."""
    import json

    import yaml

    from sftpack.cli import main as cli

    def plan(*flags):
        assert cli(["plan", "--params", "7B", "--examples", "10000", "--json", *flags]) == 0
        return json.loads(capsys.readouterr().out)

    assert plan("--gpus", "8", "--gpu-memory", "60")["method"] == "full"
    assert plan("--gpus", "1", "--gpu-memory", "60")["method"] == "lora"  # one GPU cannot shard
    assert plan("--gpus", "2", "--gpu-memory", "12")["method"] == "qlora"  # not even a shard of full fits
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"model": {"name_or_path": "m"}, "data": {"train": "x.jsonl"},
                                    "train": {"output_dir": str(tmp_path / "out")}}))
    # 20 GiB: shards fit with activation checkpointing only, and the run config says so.
    assert cli(["plan", "--params", "7B", "--examples", "10000", "--gpus", "8", "--gpu-memory", "20",
                "--config", str(base), "--write-config", str(tmp_path / "run.yaml")]) == 0
    out = capsys.readouterr().out
    assert "method: full" in out and "strategy fsdp on 8 GPU(s)" in out
    written = yaml.safe_load((tmp_path / "run.yaml").read_text())
    assert "peft" not in written and written["train"]["gradient_checkpointing"] is True
    assert yaml.safe_load((tmp_path / "run.accelerate.yaml").read_text())["distributed_type"] == "FSDP"


def test_why_rows_train_unpacked_names_both_feeds_errors():
    """When both packed feeds raise, the reason (logged, in sftpack_run.json and in the `require`
    refusal) gives both errors; it gave the first and a dangling '; ' ("...: X; . To train packed")."""
    from sftpack.training.isolation import Isolation, _why_not, refusal

    feeds = {"trl": "ValueError: can't keep packed sequences apart", "position_ids": "TypeError: seq_idx", "leak": 0.4}
    reason = _why_not(feeds)
    assert reason == "ValueError: can't keep packed sequences apart; with position_ids alone TypeError: seq_idx"
    message = str(refusal(Isolation(route="unpacked", model_type="m", attn_implementation="sdpa", max_difference=None,
                                    reason=reason, advice="install x")))
    assert "; ." not in message and "TypeError: seq_idx. To train packed, install x" in message
    assert _why_not({**feeds, "position_ids": 0.5}).endswith(
        "with position_ids alone sequences in a packed row see each other (largest logit difference 0.5)")


def test_export_of_an_fsdp_checkpoint_leaves_its_training_state_behind(tiny_model_dir, tmp_path):
    """A checkpoint of an FSDP run holds, besides model.safetensors, accelerate's full optimizer state and
    a second copy of the weights (optimizer.bin, pytorch_model_fsdp.bin: the names test_fsdp asserts);
    export copies the model only. Both were copied into the exported model (3x its size, AdamW state)."""
    import shutil

    import torch
    from accelerate.utils.constants import FSDP_MODEL_NAME, OPTIMIZER_NAME
    from safetensors.torch import load_file

    from sftpack.exporting.stage import run as export

    checkpoint = tmp_path / "checkpoint-2"
    shutil.copytree(tiny_model_dir, checkpoint)
    weights = load_file(checkpoint / "model.safetensors")
    torch.save(weights, checkpoint / f"{FSDP_MODEL_NAME}.bin")
    torch.save({"state": {k: {"exp_avg": torch.zeros_like(v)} for k, v in weights.items()}},
               checkpoint / f"{OPTIMIZER_NAME}.bin")
    torch.save({}, checkpoint / "rng_state_0.pth")
    result = export(checkpoint, tmp_path / "exported")
    names = {p.name for p in (tmp_path / "exported").iterdir()}
    assert "model.safetensors" in names and result["method"] == "full"
    assert not names & {f"{FSDP_MODEL_NAME}.bin", f"{OPTIMIZER_NAME}.bin", "rng_state_0.pth"}, names
