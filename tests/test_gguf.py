"""GGUF export (sftpack.exporting.gguf): llama.cpp's converter writes the file, llama.cpp runs it.

Two tiny models made from config, each trained for a few steps until it answers three prompts
word for word (greedy decoding of a random-init model ties; a trained one does not):
a Llama (the demo's family) on SmolLM2's tokenizer and template, and a Qwen3 on SmolLM2's
tokenizer with Qwen3's control tokens added and Qwen3's template passed as the chat template.
llama-cpp-python (`make test` installs it: `make llamacpp`) loads each exported GGUF:
its greedy tokens must equal transformers' at f16, its logits must match within a tolerance,
and its chat (the GGUF's template, its stop tokens) must give the trained answer.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sftpack.errors import SftpackError
from sftpack.exporting.gguf import chat, converter, write_gguf

REPO = Path(__file__).resolve().parent.parent
QWEN3_TEMPLATE = (REPO / "tests" / "fixtures" / "templates" / "real" / "qwen3.jinja").read_text(encoding="utf-8")
ANSWERS = {  # prompt -> the reply each tiny model is trained to give
    "May I know your name?": "My name is Pip.",
    "How many meters is 3 km?": "3 km is 3000 meters.",
    "Say hello.": "Hello from Pip!",
}
UNSEEN = "What is the capital of France?"
GREEDY_TOKENS = 16  # every trained answer and its stop token fit
ON_LLAMA_WORKER = pytest.mark.xdist_group("gguf-llama")  # the trained tiny Llama is built once
LOGIT_TOLERANCE = 0.02
"""Largest |llama.cpp - transformers| logit allowed at f16, as a share of the prompt's logit
range (f16 weights and llama.cpp's kernels against float32 PyTorch; observed about 0.002)."""


def _train_to_answer(model, tokenizer, template: str | None, max_steps: int = 80) -> float:
    """AdamW steps on the ANSWERS replies (prompts rendered as chat does at inference, and
    masked) until the loss is below 0.02: the trained prompts then decode with wide margins."""
    import torch

    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], chat_template=template,
                                             tokenize=False, add_generation_prompt=True) for q in ANSWERS]
    batch = tokenizer([p + a + "<|im_end|>" for p, a in zip(prompts, ANSWERS.values())],
                      add_special_tokens=False, return_tensors="pt", padding=True)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    for row, prompt in enumerate(prompts):
        labels[row, :len(tokenizer(prompt, add_special_tokens=False).input_ids)] = -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(max_steps):
        loss = model(**batch, labels=labels).loss
        if loss.item() < 0.02:
            break
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return loss.item()


def _tiny(kind: str, folder: Path, tokenizer_dir: Path, template: str | None) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen3Config

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.padding_side = "right"
    # One layer: its answers are learnt in about half the steps two layers take (SmolLM2's 49k-wide
    # head costs the most either way); the export still maps every kind of tensor a layer holds.
    shape = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                 tie_word_embeddings=True, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                 bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = LlamaConfig(**shape) if kind == "llama" else Qwen3Config(head_dim=16, **shape)
    model = AutoModelForCausalLM.from_config(config)
    loss = _train_to_answer(model, tokenizer, template)
    assert loss < 0.02, f"the tiny {kind} did not learn its answers (loss {loss:.3f})"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, model_dir) -> Path:
    """A trained 1-layer Llama with SmolLM2's tokenizer and template."""
    return _tiny("llama", tmp_path_factory.mktemp("gguf-llama"), model_dir, None)


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory, stand_in) -> Path:
    """A trained 1-layer Qwen3 on SmolLM2's tokenizer plus Qwen3's added control tokens; its
    tokenizer folder keeps SmolLM2's template, the export passes Qwen3's."""
    tokenizer, _ = stand_in("qwen3")
    return _tiny("qwen3", tmp_path_factory.mktemp("gguf-qwen3"), Path(tokenizer.name_or_path), QWEN3_TEMPLATE)


@pytest.fixture(scope="session")
def llama_f16(tiny_llama, tmp_path_factory) -> tuple[Path, dict]:
    """The tiny Llama exported at f16: (the GGUF, write_gguf's record)."""
    out = tmp_path_factory.mktemp("gguf-llama-f16") / "export" / "tiny.gguf"
    return out, _export(tiny_llama, out)


def _export(hf_dir: Path, out: Path, outtype: str = "f16", template: str | None = None) -> dict:
    return write_gguf(hf_dir, out, outtype=outtype, chat_template=template, stop_tokens=["<|im_end|>"],
                      name=f"tiny-{hf_dir.name}")


def _llama_cpp(gguf_file: Path):
    from llama_cpp import Llama

    return Llama(model_path=str(gguf_file), n_ctx=256, logits_all=True, n_threads=2, seed=0, verbose=False)


def _compare_with_transformers(hf_dir: Path, gguf_file: Path, template: str | None) -> None:
    """Same prompt tokens; on the trained prompts the same greedy tokens (up to the stop token or
    GREEDY_TOKENS); on an unseen prompt every position's logits within LOGIT_TOLERANCE."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    llm = _llama_cpp(gguf_file)
    for prompt in [*ANSWERS, UNSEEN]:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], chat_template=template,
                                             tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, prompt
        if prompt == UNSEEN:
            llm.reset()
            llm.eval(ids)
            ours = np.asarray(llm.scores[:len(ids)])
            with torch.no_grad():
                theirs = model(torch.tensor([ids])).logits[0].numpy()
            error = np.abs(ours - theirs).max() / (theirs.max() - theirs.min())
            assert error <= LOGIT_TOLERANCE, error
            continue
        expected = []
        with torch.no_grad():
            while len(expected) < GREEDY_TOKENS and stop not in expected:
                expected.append(model(torch.tensor([ids + expected])).logits[0, -1].argmax().item())
        got = []
        for token in llm.generate(ids, temp=0.0, reset=True):
            got.append(token)
            if len(got) == GREEDY_TOKENS or token == stop:
                break
        assert got == expected, (prompt, tokenizer.decode(got), tokenizer.decode(expected))
        assert tokenizer.decode(got) == ANSWERS[prompt] + "<|im_end|>"


def _metadata(gguf_file: Path) -> dict:
    from gguf import GGUFReader

    fields = GGUFReader(gguf_file).fields
    return {key: fields[key].contents() for key in fields if not key.startswith("GGUF.")
            and key not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")}


@ON_LLAMA_WORKER
def test_llama_f16_runs_in_llama_cpp_as_in_transformers(tiny_llama, llama_f16, model_dir):
    out, record = llama_f16
    _compare_with_transformers(tiny_llama, out, None)
    for prompt, answer in ANSWERS.items():
        assert chat(out, prompt) == answer

    meta = _metadata(out)
    im_end = 2  # SmolLM2's <|im_end|>
    assert meta["general.name"] == f"tiny-{tiny_llama.name}"
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.eos_token_id"] == im_end and meta["tokenizer.ggml.eot_token_id"] == im_end
    assert meta["tokenizer.chat_template"] == (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    assert meta["sftpack.stop_tokens"] == ["<|im_end|>"]
    tool = converter()
    assert meta["sftpack.llama_cpp_python"] == tool["llama_cpp_python"] == record["llama_cpp_python"]
    assert tool["llama_cpp_commit"] in meta["sftpack.converter"] and len(tool["llama_cpp_commit"]) == 40
    assert meta["sftpack.converter"] == record["converter"]

    import hashlib
    assert record["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert record["bytes"] == out.stat().st_size and record["outtype"] == "f16"
    assert sorted(p.name for p in out.parent.iterdir()) == ["Modelfile", "tiny.gguf"]
    modelfile = (out.parent / "Modelfile").read_text(encoding="utf-8").splitlines()
    assert "FROM ./tiny.gguf" in modelfile
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert any(line.startswith('TEMPLATE """{{- range .Messages }}<|im_start|>') for line in modelfile)


@ON_LLAMA_WORKER
def test_q8_0_is_smaller_and_answers_the_same(tiny_llama, llama_f16, tmp_path):
    """Through the export stage, from a bare model folder (no run: no stop markers recorded), so
    the model's own eos (generation_config.json) is the GGUF's stop token, as hf export keeps it."""
    from gguf import GGUFReader

    from sftpack.exporting.stage import ExportConfig, run as export

    q8 = tmp_path / "q8" / "tiny.gguf"
    manifest = export(tiny_llama, q8, ExportConfig(format="gguf", outtype="q8_0"))
    assert manifest["gguf"]["outtype"] == "q8_0" and manifest["method"] == "full"
    assert manifest["stop_tokens"] == ["<|im_end|>"] and manifest["stop_tokens_from"].startswith("unknown")
    assert 'PARAMETER stop "<|im_end|>"' in (q8.parent / "Modelfile").read_text(encoding="utf-8")
    tensors = {name: GGUFReader(path).tensors for name, path in (("f16", llama_f16[0]), ("q8", q8))}
    assert {t.tensor_type.name for t in tensors["q8"] if "norm" not in t.name} == {"Q8_0"}  # norms stay F32
    # 8.5 bits a weight against 16 (norms stay F32; the vocabulary, about 1.8 MB here, is in both)
    assert sum(t.n_bytes for t in tensors["q8"]) < 0.55 * sum(t.n_bytes for t in tensors["f16"])
    for prompt, answer in ANSWERS.items():
        assert chat(q8, prompt) == answer


def test_qwen3_with_added_tokens_and_its_own_template(tiny_qwen3, tmp_path):
    out = tmp_path / "qwen.gguf"
    _export(tiny_qwen3, out, template=QWEN3_TEMPLATE)
    _compare_with_transformers(tiny_qwen3, out, QWEN3_TEMPLATE)
    for prompt, answer in ANSWERS.items():
        assert chat(out, prompt) == answer
    meta = _metadata(out)
    assert meta["general.architecture"] == "qwen3"
    assert meta["tokenizer.chat_template"] == QWEN3_TEMPLATE  # not the folder's SmolLM2 template
    from transformers import AutoTokenizer
    think = AutoTokenizer.from_pretrained(tiny_qwen3).convert_tokens_to_ids("<think>")
    assert think >= 49152  # an added token: in the GGUF's vocabulary at the same id
    from llama_cpp import Llama
    llm = Llama(model_path=str(out), n_ctx=64, verbose=False)
    assert llm.tokenize(b"<think>", add_bos=False, special=True) == [think]
    # Qwen3's template renders as ChatML, so the Modelfile carries the ChatML template, no SYSTEM
    modelfile = (tmp_path / "Modelfile").read_text(encoding="utf-8")
    assert "TEMPLATE" in modelfile and "SYSTEM" not in modelfile


def test_unsupported_architecture(tmp_path, model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer, OPTConfig

    hf_dir = tmp_path / "opt"
    AutoModelForCausalLM.from_config(OPTConfig(vocab_size=49152, hidden_size=16, num_hidden_layers=1,
                                               ffn_dim=32, num_attention_heads=2, word_embed_proj_dim=16,
                                               max_position_embeddings=64)).save_pretrained(hf_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(hf_dir)
    out = tmp_path / "out" / "opt.gguf"
    with pytest.raises(SftpackError, match=r"architecture 'OPTForCausalLM' is not supported by llama.cpp's converter"):
        _export(hf_dir, out)
    assert list(out.parent.iterdir()) == []


def test_not_a_model_folder(tmp_path):
    run = tmp_path / "runs" / "demo"  # a run folder with no final/ (nor config.json)
    run.mkdir(parents=True)
    with pytest.raises(SftpackError, match="no config.json; GGUF export needs a full Hugging Face model folder"):
        _export(run, tmp_path / "x.gguf")
    with pytest.raises(SftpackError, match="outtype 'q4_k'"):
        _export(run, tmp_path / "x.gguf", outtype="q4_k")


@ON_LLAMA_WORKER
def test_disk_full_leaves_nothing(tiny_llama, tmp_path):
    """A 2 MiB tmpfs (the tiny model's f16 GGUF is about 7 MB): the converter hits ENOSPC."""
    disk = tmp_path / "small-disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    try:
        (disk / "export").mkdir()
        (disk / "export" / "Modelfile").write_text("an earlier export's\n")
        with pytest.raises(SftpackError, match=r"no space left on device.* while writing the GGUF; nothing was written"):
            _export(tiny_llama, disk / "export" / "tiny.gguf")
        assert [p.name for p in (disk / "export").iterdir()] == ["Modelfile"]
        assert (disk / "export" / "Modelfile").read_text() == "an earlier export's\n"
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_missing_install_names_the_command(tmp_path, monkeypatch):
    """A Python whose prefix has no converter: one message with the install command."""
    monkeypatch.setattr(sys, "prefix", str(tmp_path))  # converter() looks under sys.prefix/share
    with pytest.raises(SftpackError, match=r"GGUF export needs llama.cpp's converter from llama-cpp-python "
                                           r"0\.3\.36 .*: run `make llamacpp` in the sftpack checkout"):
        converter()
    with pytest.raises(SftpackError, match="run `make llamacpp`"):  # before any work is done
        _export(REPO / "models" / "smollm2-135m-instruct", tmp_path / "x.gguf")
    assert list(tmp_path.iterdir()) == []
