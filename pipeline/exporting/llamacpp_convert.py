"""llama.cpp's own `convert_hf_to_gguf.py`, run with sftpack's metadata added.

`sftpack.exporting.gguf.write_gguf` runs this file in a child process as

    python -P llamacpp_convert.py CONVERTER_DIR SETTINGS_JSON -- CONVERTER_ARGS...

`-P` keeps this folder (which holds sftpack's `gguf.py`) off `sys.path`, and the child imports
the converter's own `gguf-py` from CONVERTER_DIR, not the `gguf` package sftpack pins: the
converter and its gguf-py come from one llama.cpp commit and are used together. Just before
the converter writes the file header, the key/values of SETTINGS_JSON's `metadata` are set
on its writer: the chat template, the stop tokens' ids (looked up in the vocabulary the
converter wrote, so they are the GGUF's ids) and sftpack's provenance strings.

Exit status: 0 written; 3 the converter has no class for the model's architecture; 4 the
disk (or a file size limit) ran out while writing; 5 a stop token is not in the vocabulary;
anything else is the converter's own failure. For 3 to 5 SETTINGS_JSON's `report` file gets
one JSON object saying what (stderr also carries the converter's progress bars).
"""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

UNSUPPORTED, OUT_OF_SPACE, UNKNOWN_TOKEN = 3, 4, 5


def fail(report: str, status: int, **what) -> int:
    Path(report).write_text(json.dumps(what), encoding="utf-8")
    return status


def main() -> int:
    converter_dir, settings_file, dashdash, *converter_args = sys.argv[1:]
    if dashdash != "--":
        sys.exit("usage: llamacpp_convert.py CONVERTER_DIR SETTINGS_JSON -- CONVERTER_ARGS...")
    settings = json.loads(Path(settings_file).read_text(encoding="utf-8"))
    sys.path[:0] = [converter_dir, str(Path(converter_dir) / "gguf-py")]

    import gguf  # the converter's own gguf-py (first on sys.path)

    import convert_hf_to_gguf
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    hparams = ModelBase.load_hparams(Path(settings["model_dir"]), False)
    architecture = get_model_architecture(hparams, ModelType.TEXT)
    try:
        get_model_class(architecture)
    except NotImplementedError:
        return fail(settings["report"], UNSUPPORTED, architecture=architecture)

    write_header = gguf.GGUFWriter.write_header_to_file
    unknown: list[str] = []

    def write_header_with_sftpack_metadata(self, *args, **kwargs):
        # The converter has set the vocabulary and its own metadata by now; ours replaces
        # the keys both set (remove first: the writer warns on an overwrite).
        tokens = self.kv_data[0][gguf.Keys.Tokenizer.LIST].value
        ids = {token: i for i, token in enumerate(tokens)}
        unknown.extend(t for t in settings["stop_tokens"] if t not in ids)
        if unknown:
            raise LookupError(unknown)
        first_stop = ids[settings["stop_tokens"][0]]
        for key in (gguf.Keys.Tokenizer.EOS_ID, gguf.Keys.Tokenizer.EOT_ID):
            self.remove_key(key)
            self.add_uint32(key, first_stop)
        if settings["chat_template"] is not None:
            self.remove_key(gguf.Keys.Tokenizer.CHAT_TEMPLATE)
            self.add_chat_template(settings["chat_template"])
        self.add_array("sftpack.stop_tokens", settings["stop_tokens"])
        for key, value in settings["strings"].items():
            self.add_string(key, value)
        return write_header(self, *args, **kwargs)

    gguf.GGUFWriter.write_header_to_file = write_header_with_sftpack_metadata
    sys.argv = ["convert_hf_to_gguf.py", *converter_args]
    try:
        convert_hf_to_gguf.main()
    except LookupError:
        if not unknown:
            raise
        return fail(settings["report"], UNKNOWN_TOKEN, unknown_tokens=unknown)
    except OSError as err:
        # numpy's tofile reports a full disk as a short write, with no errno
        short_write = err.errno is None and " requested and " in str(err)
        if err.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) and not short_write:
            raise
        return fail(settings["report"], OUT_OF_SPACE, error=err.strerror or f"no space left on device ({err})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
