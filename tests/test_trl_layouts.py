"""TRL's own prompt-completion layouts read as layouts: the completion's assistant turns are
trained, the prompt is not, and a record packs to the same input_ids and labels as the equivalent
messages record; TRL's own preparation of the same records trains the same tokens and more."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sftpack
from sftpack.io.prompt_completion import KEYS
from sftpack.io.readers import open_input
from sftpack.templates.masking import IGNORE_INDEX

SYSTEM = {"role": "system", "content": "You are Pip."}
USER = {"role": "user", "content": "Convert 3 km to meters."}
ASSISTANT = {"role": "assistant", "content": "3 km is 3000 meters."}
USER2 = {"role": "user", "content": "And 2 km?"}
ASSISTANT2 = {"role": "assistant", "content": "2 km is 2000 meters."}

MESSAGES = [{"id": "a", "messages": [SYSTEM, USER, ASSISTANT]},
            {"id": "b", "messages": [USER, ASSISTANT]},
            {"id": "c", "messages": [USER, ASSISTANT, USER2, ASSISTANT2]},
            {"id": "d", "messages": [USER, {**ASSISTANT, "train": False}, USER2, ASSISTANT2]}]
PROMPT_COMPLETION = [  # conversational, standard, a multi-turn completion, a multi-turn prompt
    {"id": "a", "prompt": [SYSTEM, USER], "completion": [ASSISTANT]},
    {"id": "b", "prompt": USER["content"], "completion": ASSISTANT["content"]},
    {"id": "c", "prompt": [USER], "completion": [ASSISTANT, USER2, ASSISTANT2]},
    {"id": "d", "prompt": [USER, ASSISTANT, USER2], "completion": [ASSISTANT2]},
]


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _packed(folder) -> dict[str, tuple[list[int], list[int]]]:
    rows = folder.dataset()
    return {ids[0]: (row["input_ids"], row["labels"]) for row, ids in zip(rows, rows["example_ids"])}


@pytest.mark.parametrize("format", ["auto", "prompt_completion"])
def test_prompt_completion_packs_as_the_equivalent_messages(model_dir, smol_tokenizer, tmp_path, format):
    messages = _jsonl(tmp_path / "messages.jsonl", MESSAGES)
    prompt_completion = _jsonl(tmp_path / "pc.jsonl", PROMPT_COMPLETION)
    options = {"tokenizer": str(model_dir), "max_length": 256, "strategy": "none"}
    want = _packed(sftpack.pack([messages], tmp_path / "a", **options))
    got_folder = sftpack.pack([prompt_completion], tmp_path / "b", format=format, **options)
    assert got_folder.totals["dropped"] == {} and got_folder.manifest["inputs"][0]["layout"] == "prompt_completion"
    got = _packed(got_folder)
    assert got == want and set(got) == {"a", "b", "c", "d"}
    ids, labels = got["b"]
    trained = smol_tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE_INDEX])
    assert trained.startswith(ASSISTANT["content"]) and USER["content"] not in trained  # the prompt is not trained
    ids, labels = got["d"]  # an assistant turn inside the prompt is context, as in TRL
    trained = smol_tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE_INDEX])
    assert trained.startswith(ASSISTANT2["content"]) and ASSISTANT["content"] not in trained


def test_prompt_completion_is_detected_and_bad_records_name_the_field(tmp_path):
    source = open_input(_jsonl(tmp_path / "pc.jsonl", PROMPT_COMPLETION + [{"prompt": 3, "completion": "x"},
                                                                          {"prompt": "x"}]))
    rows = [row for batch in source.batches() for row in batch]
    assert source.layout == "prompt_completion"
    assert rows[1].record["messages"] == [USER, ASSISTANT] and rows[0].record["id"] == "a"
    assert (rows[4].error.path, rows[4].error.rule) == ("/prompt", "convert_type")
    assert (rows[5].error.path, rows[5].error.rule) == ("/completion", "convert_missing")


def _spans(tokenizer, ids: list[int], trained: list[bool]) -> list[str]:
    """The trained text, one string per run of trained tokens."""
    runs, run = [], []
    for token, on in zip(ids + [None], trained + [False]):
        if on:
            run.append(token)
        elif run:
            runs.append(tokenizer.decode(run))
            run = []
    return runs


def test_trl_trains_the_same_assistant_text_and_also_what_follows_it(tiny_model_dir, model_dir, smol_tokenizer,
                                                                      tmp_path):
    """TRL's own preparation (SFTTrainer, completion_only_loss on by default for prompt-completion
    data) of the same records, with the real SmolLM2 tokenizer: the same input_ids for the
    conversational records; every token sftpack trains, TRL trains too; TRL also trains every
    other token after the prompt: the "\\n" after each <|im_end|>, and the user turn and role
    headers inside a multi-turn completion. A string record TRL trains as plain text, with the
    same trained tokens (README "prompt_completion")."""
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    conversational = [r for r in PROMPT_COMPLETION if isinstance(r["prompt"], list)]
    standard = [r for r in PROMPT_COMPLETION if isinstance(r["prompt"], str)]
    args = SFTConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, bf16=False, max_length=None)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args,
                         processing_class=smol_tokenizer,
                         train_dataset=datasets.Dataset.from_list([{k: r[k] for k in KEYS} for r in conversational]),
                         eval_dataset=datasets.Dataset.from_list([{k: r[k] for k in KEYS} for r in standard]))
    assert trainer.completion_only_loss
    prepared = [*trainer.train_dataset, *trainer.eval_dataset]
    trl = {r["id"]: (row["input_ids"], row["labels"]) for r, row in zip(conversational + standard, prepared)}
    ours = _packed(sftpack.pack([_jsonl(tmp_path / "pc.jsonl", PROMPT_COMPLETION)], tmp_path / "packed",
                                tokenizer=str(model_dir), max_length=256, strategy="none"))
    only_trl = {"a": ["\n"], "c": ["\n<|im_start|>user\nAnd 2 km?<|im_end|>\n<|im_start|>assistant\n", "\n"],
                "d": ["\n"]}
    for key, extra in only_trl.items():
        (ids, labels), (trl_ids, trl_labels) = ours[key], trl[key]
        assert ids == trl_ids, key
        trained = [label != IGNORE_INDEX for label in labels]
        trl_trained = [label != IGNORE_INDEX for label in trl_labels]
        assert all(theirs for mine, theirs in zip(trained, trl_trained) if mine), key  # ours within TRL's
        first = trl_trained.index(True)  # TRL: every token from the end of the prompt on
        assert trl_trained == [False] * first + [True] * (len(ids) - first) and trained.index(True) == first, key
        assert _spans(smol_tokenizer, ids, [t and not m for m, t in zip(trained, trl_trained)]) == extra, key
    (ids, labels), (trl_ids, trl_labels) = ours["b"], trl["b"]
    assert smol_tokenizer.decode(trl_ids) == USER["content"] + ASSISTANT["content"] + "<|im_end|>"  # plain text
    assert smol_tokenizer.decode(ids).startswith("<|im_start|>system\n")  # ours: the chat template's rendering
    assert [t for t in trl_labels if t != IGNORE_INDEX] == [t for t in labels if t != IGNORE_INDEX]
