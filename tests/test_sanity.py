"""sanity: trained-span rendering, the loss verdict, and real short runs through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from sftpack.errors import SftpackError
from sftpack.templates.trained_text import mark_trained
from sftpack.training.sanity import SanityConfig, held_out_prompt, loss_verdict, split_sequences
from sftpack.cli import main as cli


def test_mark_trained_wraps_exactly_the_trained_spans(smol_tokenizer):
    pieces = [("Q: hi A:", False), (" hello there", True), (" Q: ok A:", False), (" bye", True)]
    ids, labels = [], []
    for text, trained in pieces:
        piece = smol_tokenizer.encode(text, add_special_tokens=False)
        ids += piece
        labels += piece if trained else [-100] * len(piece)
    assert mark_trained(smol_tokenizer, ids, labels, color=False) == "Q: hi A:[[ hello there]] Q: ok A:[[ bye]]"
    assert mark_trained(smol_tokenizer, ids, [-100] * len(ids), color=False) == "Q: hi A: hello there Q: ok A: bye"


def test_sequences_and_held_out_prompt_follow_seq_lengths():
    row = {"input_ids": [1, 2, 3, 4, 5, 6, 7], "labels": [-100, 2, 3, -100, -100, 6, 7], "seq_lengths": [3, 4]}
    assert split_sequences(row) == [([1, 2, 3], [-100, 2, 3]), ([4, 5, 6, 7], [-100, -100, 6, 7])]
    assert held_out_prompt(split_sequences(row)[1]) == [4, 5]


@pytest.mark.parametrize("losses, verdict", [
    ([3.0, 2.9, 2.8, 2.5, 2.2, 2.0], "PASS"),
    ([3.0, 3.0, 3.0, 3.1, 3.0, 3.2], "FAIL"),
    ([10.8, 1.9e7, 10.8, 10.79, 10.79, 10.79], "FAIL"),  # diverged, then flat: a spike is no progress
    ([3.0, 2.0, math.nan, 1.0, 1.0, 1.0], "FAIL"),
    ([3.0, 2.0], "FAIL"),
])
def test_loss_verdict(losses, verdict):
    assert loss_verdict(losses)[0] == verdict


def test_sanity_options_are_checked():
    with pytest.raises(SftpackError, match="steps 2"):
        SanityConfig(steps=2)


def _config(tmp_path, tiny_model_dir, packed_chat, **train):
    settings = {"output_dir": str(tmp_path / "run"), "learning_rate": 3e-3, "per_device_train_batch_size": 1,
                "seed": 3, "disable_tqdm": True, "eval_strategy": "steps", "eval_steps": 5,
                "load_best_model_at_end": True, "report_to": ["tensorboard"]}  # all replaced for sanity
    settings.update(train)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"train": str(packed_chat[0]), "validation": str(packed_chat[1]), "max_length": 256},
        "train": settings}))
    return path


def test_sanity_report_passes_on_a_learning_setup(tmp_path, tiny_model_dir, packed_chat, capsys):
    config = _config(tmp_path, tiny_model_dir, packed_chat)
    assert cli(["sanity", "--config", str(config), "--steps", "10", "--examples", "50",
                "--max-new-tokens", "8"]) == 0
    text = capsys.readouterr().out
    report = json.loads((tmp_path / "run" / "sanity" / "sanity.json").read_text())
    assert report["passed"] and report["verdict"] == "PASS" and report["steps"] == 10
    assert len(report["losses"]) == 10 and report["losses"][-1] < report["losses"][0]
    assert report["examples"] >= 50 and report["rows"] < 40
    assert report["memory"]["process_peak_rss_mb"] > 0
    # Trained spans are the assistant answers, with their end-of-turn token.
    assert "<|im_start|>assistant\n[[" in report["samples"][0] and "<|im_end|>" in report["samples"][0]
    assert "[[" not in report["samples"][0].split("<|im_start|>assistant")[0]
    assert report["prompt"].endswith("<|im_start|>assistant\n")  # held out: a validation prompt
    assert isinstance(report["answer_before"], str) and isinstance(report["answer_after"], str)
    assert "PASS: loss decreased" in text and "greedy answer after training" in text
    assert report["isolation"]["route"] == "position_ids" and "rows: packed, kept apart by position_ids" in text
    sanity_dir = tmp_path / "run" / "sanity"
    assert text.splitlines()[-1] == f"wrote {sanity_dir / 'sanity.txt'} and {sanity_dir / 'sanity.json'}"
    assert not list((tmp_path / "run" / "sanity").glob("checkpoint-*"))  # sanity saves nothing
    assert not (tmp_path / "run" / "sanity" / "runs").exists()  # and reports to no tracker


def test_sanity_exits_nonzero_when_training_diverges(tmp_path, tiny_model_dir, packed_chat, capsys):
    config = _config(tmp_path, tiny_model_dir, packed_chat)
    assert cli(["sanity", "--config", str(config), "train.learning_rate=1000.0", "--steps", "6",
                "--examples", "20", "--max-new-tokens", "4", "--out-dir", str(tmp_path / "checked")]) == 1
    out = capsys.readouterr().out
    assert "FAIL: " in out and ("did not decrease" in out or "non-finite" in out)
    assert "WARN step" in out and "grad norm" in out  # the health monitor saw it too
    # --out-dir (what `make sanity` uses): the report goes there, not under train.output_dir.
    assert json.loads((tmp_path / "checked" / "sanity.json").read_text())["verdict"] == "FAIL"
    assert not (tmp_path / "run").exists()


def test_sanity_without_the_demo_data_names_make_demo_data(tmp_path, tiny_model_dir, packed_chat, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a fresh checkout: configs/demo.yaml's data/demo/*.jsonl are not made yet
    config = _config(tmp_path, tiny_model_dir, packed_chat)
    assert cli(["sanity", "--config", str(config), "data.train=data/demo/train.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "data/demo/train.jsonl: input file not found" in err and "make demo-data" in err
