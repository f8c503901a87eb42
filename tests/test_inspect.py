"""The packed-row inspector: exact decoded text with trained tokens bracketed, boundaries, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sftpack.errors import SftpackError
from sftpack.reporting.inspect import ANSI_CLOSE, ANSI_OPEN, InspectConfig, mark_trained, run

FIXTURE = Path(__file__).parent / "fixtures" / "report" / "conversations.jsonl"

# Line 4 of the fixture, packed with SmolLM2's template (which adds its default system prompt):
# only the answer and its <|im_end|> are trained. (Lines 8 and 9 fail validate's checks, so pack drops them.)
EXPECTED_R4 = """\
══ row 3: 121/128 tokens, 3 sequences, 18 trained ══
── example r4 (42 tokens, 3 trained) ──
<|im_start|>system
You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
<|im_start|>user
what is the capital of FRANCE<|im_end|>
<|im_start|>assistant
[[Paris.<|im_end|>]]
"""


@pytest.fixture(scope="module")
def packed(tmp_path_factory, model_dir) -> Path:
    from sftpack.packing.stage import PackConfig
    from sftpack.packing.stage import run as pack

    result = pack([FIXTURE], tmp_path_factory.mktemp("packed"), PackConfig(tokenizer=str(model_dir), max_length=128,
                                                                              allow_rejects=True))
    return Path(result["path"])


def test_known_example_exact_text(packed):
    assert run(packed, InspectConfig(example="r4")) == EXPECTED_R4


def test_every_trained_turn_bracketed_and_boundaries_marked(packed, capsys):
    from sftpack.cli import main

    text = run(packed, InspectConfig(example="r5"))
    assert text.count("[[") == 2  # two assistant turns, each "answer<|im_end|>"
    assert "[[Hello! How can I help you today?<|im_end|>]]" in text
    assert "[[Why did the chicken cross the road? To get to the other side.<|im_end|>]]" in text
    assert main(["inspect", str(packed), "--row", "0", "--color", "never"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    sequences = int(header.split(", ")[1].split()[0])
    assert out.count("── example ") == sequences >= 1
    assert "\x1b[" not in out


def test_color_always_uses_ansi(packed):
    text = run(packed, InspectConfig(example="r4", color=True))
    assert f"{ANSI_OPEN}Paris.<|im_end|>{ANSI_CLOSE}" in text and "[[" not in text


def test_mark_trained_runs(smol_tokenizer):
    ids = np.array(smol_tokenizer("a b c d", add_special_tokens=False)["input_ids"])
    labels = np.where(np.arange(ids.size) % 2 == 1, ids, -100)
    assert mark_trained(smol_tokenizer, ids, labels, color=False) == "a[[ b]] c[[ d]]"
    assert mark_trained(smol_tokenizer, ids, np.full(ids.size, -100), color=False) == "a b c d"


def test_errors_are_clear(packed, tmp_path, capsys):
    from sftpack.cli import main

    with pytest.raises(SftpackError, match="out of range; the folder has 5 rows"):
        run(packed, InspectConfig(row=5))
    with pytest.raises(SftpackError, match="no example 'r12'"):  # too long: dropped by pack
        run(packed, InspectConfig(example="r12"))
    with pytest.raises(SftpackError, match="not both"):
        InspectConfig(row=0, example="r4")
    moved = tmp_path / "moved"
    shutil.copytree(packed, moved)
    manifest = json.loads((moved / "manifest.json").read_text(encoding="utf-8"))
    manifest["tokenizer"]["name_or_path"] = str(tmp_path / "gone")
    (moved / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert main(["inspect", str(moved)]) == 2
    err = capsys.readouterr().err
    assert "gone: tokenizer folder not found" in err and "--tokenizer" in err
    assert main(["inspect", str(tmp_path)]) == 2
    assert "no readable manifest.json" in capsys.readouterr().err


def test_token_pieces_add_up_to_the_decoding_with_special_tokens_marked(smol_tokenizer):
    from sftpack.reporting.inspect import token_pieces

    text = "<|im_start|>user\nCafé 中文 ok<|im_end|>"
    ids = np.array(smol_tokenizer(text, add_special_tokens=False)["input_ids"])
    labels = np.where(np.arange(ids.size) >= ids.size - 4, ids, -100)
    pieces = token_pieces(smol_tokenizer, ids, labels)
    assert "".join(p.text for p in pieces) == text and "\ufffd" not in "".join(p.text for p in pieces)
    assert [p.token_ids for p in pieces if p.special] == [(1,), (2,)]  # <|im_start|>, <|im_end|>
    assert sum(len(p.token_ids) for p in pieces) == ids.size and len(pieces) > 6  # one piece per token mostly
    assert [p.trained for p in pieces][-1] and not pieces[0].trained
    assert mark_trained(smol_tokenizer, ids, labels, color=False).endswith("]]")
