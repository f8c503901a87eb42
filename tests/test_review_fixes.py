"""Fixes from the review of the packed-exact, PEFT, FSDP2 and export merges: each test failed before its fix."""

from __future__ import annotations

import pytest

from sftpack.config.run_config import build_config
from sftpack.errors import SftpackError


def _adapter_config(quantization: dict) -> dict:
    return {"model": {"name_or_path": "models/smollm2-135m-instruct", "quantization": quantization},
            "data": {"train": "data.jsonl"}, "train": {"output_dir": "out"}, "peft": {"r": 4}}


@pytest.mark.parametrize("quantization, says", [
    ({"load_in_4bit": True, "llm_int8_threshold": 6}, "llm_int8_threshold must be a float"),
    ({"load_in_4bit": True, "load_in_8bit": True}, "only one can be used"),
    ({"load_in_4bit": True, "bnb_4bit_compute_dtype": "float33"}, "float33"),
])
def test_quantization_values_bitsandbytes_refuses_are_config_errors(quantization, says):
    """A value BitsAndBytesConfig refuses is a config error naming model.quantization, not a traceback
    (TypeError, AttributeError) or a 'model.name_or_path: cannot load' after the data work."""
    with pytest.raises(SftpackError, match="model.quantization: transformers BitsAndBytesConfig refuses it") as err:
        build_config(_adapter_config(quantization))
    assert says in str(err.value)
    build_config(_adapter_config({"load_in_4bit": True, "llm_int8_threshold": 6.0, "bnb_4bit_compute_dtype": "float32"}))
