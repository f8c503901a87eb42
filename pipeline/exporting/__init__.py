"""Exporting a trained run: a merged full model (`stage.py`), as an HF folder or a GGUF file (`gguf.py`).
Named by activity, not `export`, which is the API function (pipeline/api.py)."""
