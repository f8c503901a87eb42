"""TRL's own prompt-completion layouts read as layouts: the completion is trained, the prompt is
not, and a record packs to the same input_ids and labels as the equivalent messages record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sftpack
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
