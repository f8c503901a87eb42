"""train under faults: a checkpoint half saved is skipped on resume; corrupt packed data refused.
(A SIGKILL between checkpoints, then resume to the same weights: tests/test_train.py.)"""

from __future__ import annotations

import pytest

from sftpack.config.run_config import build_config
from sftpack.errors import SftpackError
from sftpack.training.stage import run


def _config(tiny_model_dir, packed, out, **train) -> dict:
    settings = {"output_dir": str(out), "max_steps": 16, "per_device_train_batch_size": 1, "learning_rate": 1e-3,
                "logging_steps": 1, "save_strategy": "steps", "save_steps": 4, "save_total_limit": 2,
                "report_to": "none", "seed": 3, "data_seed": 3, "disable_tqdm": True}
    settings.update(train)
    return {"model": {"name_or_path": str(tiny_model_dir)},
            "data": {"train": str(packed[0]), "validation": None, "max_length": 256}, "train": settings}


def test_a_checkpoint_killed_mid_save_is_skipped_on_resume(tiny_model_dir, packed_chat, tmp_path):
    out = tmp_path / "run"
    run(build_config(_config(tiny_model_dir, packed_chat, out, max_steps=8)))
    # checkpoint-12 as a killed save leaves it: weights written, trainer_state.json not yet.
    broken = out / "checkpoint-12"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"partial")
    manifest = run(build_config(_config(tiny_model_dir, packed_chat, out, max_steps=12,
                                        resume_from_checkpoint=True)))
    assert manifest["resumed_from"].endswith("checkpoint-8") and manifest["steps"] == 12


def test_train_refuses_a_packed_folder_that_fails_verification(tiny_model_dir, packed_chat, tmp_path):
    import shutil

    corrupt = tmp_path / "packed"
    shutil.copytree(packed_chat[0], corrupt)
    shard = next(corrupt.glob("data-*.arrow"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x55
    shard.write_bytes(bytes(data))
    with pytest.raises(SftpackError, match=r"failed verification, refusing to train on it: .*sha256"):
        run(build_config(_config(tiny_model_dir, (corrupt, None), tmp_path / "out")))
    assert not (tmp_path / "out" / "final").exists()


def test_a_model_folder_without_weights_is_one_clear_error(tiny_model_dir, packed_chat, tmp_path):
    import shutil

    bare = tmp_path / "bare-model"
    shutil.copytree(tiny_model_dir, bare, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(SftpackError, match=r"bare-model: cannot load: .*no file named model.safetensors"):
        run(build_config(_config(bare, packed_chat, tmp_path / "out")))
