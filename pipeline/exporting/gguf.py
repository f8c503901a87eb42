"""A merged Hugging Face model folder -> one GGUF file for llama.cpp, Ollama and LM Studio, and an
Ollama `Modelfile` beside it.

llama.cpp's own converter does the conversion: `convert_hf_to_gguf.py` with its `conversion/`
package and `gguf-py`, as vendored in the source distribution of the llama-cpp-python release
that is installed (`make llamacpp` installs both; see `converter()`). sftpack adds what the
folder alone cannot say (llamacpp_convert.py sets it on the converter's writer):

    tokenizer.chat_template        the template the model was trained with
    tokenizer.ggml.eos_token_id    the first stop token (the one every trained assistant
    tokenizer.ggml.eot_token_id      turn ends with): llama.cpp stops generating on both
    sftpack.stop_tokens            all stop tokens, as text
    general.name                   the model's name
    sftpack.version, sftpack.llama_cpp_python, sftpack.converter   provenance

The GGUF and the Modelfile are written beside their targets under `.incomplete-` names and
renamed into place when complete: a failure (the disk filling up included) leaves neither.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from sftpack.errors import SftpackError
from sftpack.store.atomic import atomic_file

OUTTYPES = ("f16", "bf16", "q8_0")
INSTALL_COMMAND = "make llamacpp"
"""Installs the pinned llama-cpp-python (pyproject.toml's `export` extra, with sentencepiece,
which the converter's llama path imports) and unpacks the converter of the same release."""

_DRIVER = Path(__file__).with_name("llamacpp_convert.py")
_UNSUPPORTED, _OUT_OF_SPACE, _UNKNOWN_TOKEN = 3, 4, 5  # llamacpp_convert.py's exit statuses

# Ollama's chat format for ChatML models (Go template syntax). Written only when the model's
# own Jinja template renders a conversation exactly as ChatML does (see `_chatml_system`).
_CHATML_GO = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
              "<|im_start|>assistant\n")


def converter() -> dict:
    """The installed llama.cpp converter and the llama-cpp-python release it comes from.

    Returns:
        {"dir": folder holding convert_hf_to_gguf.py, conversion/ and gguf-py/,
         "llama_cpp_python": release, "llama_cpp_commit": llama.cpp commit it vendors,
         "gguf_py": gguf-py's version}

    Raises:
        SftpackError: llama-cpp-python, its converter or sentencepiece is missing; the
            message names the install command.
    """
    try:
        release = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        release = None
    folder = Path(sys.prefix) / "share" / f"sftpack-llamacpp-{release}"
    missing = []
    if release is None:
        missing.append("llama-cpp-python and llama.cpp's converter")
    elif not (folder / "convert_hf_to_gguf.py").is_file():
        missing.append(f"llama.cpp's converter from llama-cpp-python {release} (looked in {folder})")
    if importlib.util.find_spec("sentencepiece") is None:
        missing.append("sentencepiece")
    if missing:
        raise SftpackError(f"GGUF export needs {' and '.join(missing)}, not installed in {sys.prefix}: "
                           f"run `{INSTALL_COMMAND}` in the sftpack checkout (it installs the pinned "
                           "llama-cpp-python and sentencepiece and unpacks llama.cpp's converter "
                           "from the same release)")
    gguf_py = tomllib.loads((folder / "gguf-py" / "pyproject.toml").read_text(encoding="utf-8"))
    commit = folder / "llama.cpp-commit"
    return {"dir": folder, "llama_cpp_python": release,
            "llama_cpp_commit": commit.read_text(encoding="utf-8").strip() if commit.is_file() else None,
            "gguf_py": gguf_py["project"]["version"]}


def write_gguf(hf_dir: Path, out_file: Path, *, outtype: str, chat_template: str | None,
               stop_tokens: list[str], name: str) -> dict:
    """Convert `hf_dir` to `out_file` with llama.cpp's converter; write `Modelfile` beside it.

    Args:
        hf_dir: a full Hugging Face model folder (config.json, safetensors, tokenizer files;
            an adapter run merged first).
        out_file: the GGUF to write; its folder also gets `Modelfile`.
        outtype: f16, bf16 or q8_0 (the converter's own quantization).
        chat_template: the Jinja template the model was trained with; None keeps the one in
            the folder's tokenizer files.
        stop_tokens: the tokens that end an assistant turn, the first being the one sftpack
            trained the model to emit.
        name: the model's name (general.name; the `ollama create` name printed).

    Returns:
        What export.json records: the file, its size and sha256, the outtype, the
        converter's and llama-cpp-python's versions, the Modelfile, the seconds taken.

    Raises:
        SftpackError: a bad outtype or folder, a missing install, an architecture the
            converter does not support, a stop token not in the vocabulary, a full disk, or
            the converter failing (its last lines are in the message).
    """
    hf_dir, out_file = Path(hf_dir), Path(out_file)
    if outtype not in OUTTYPES:
        raise SftpackError(f"outtype {outtype!r}: choose one of {', '.join(OUTTYPES)}")
    if not (hf_dir / "config.json").is_file():
        raise SftpackError(f"{hf_dir}: no config.json; GGUF export needs a full Hugging Face model folder")
    if not stop_tokens:
        raise SftpackError("stop_tokens is empty: GGUF export needs the token that ends an assistant turn")
    tool = converter()
    converter_text = (f"llama.cpp {tool['llama_cpp_commit'] or 'unknown commit'} convert_hf_to_gguf.py "
                      f"(gguf-py {tool['gguf_py']}), vendored in llama-cpp-python {tool['llama_cpp_python']}")
    from sftpack import __version__

    settings = {"model_dir": str(hf_dir), "chat_template": chat_template, "stop_tokens": list(stop_tokens),
                "report": None,  # set below: where the converter run says why it failed
                "strings": {"sftpack.version": __version__, "sftpack.llama_cpp_python": tool["llama_cpp_python"],
                            "sftpack.converter": converter_text}}
    modelfile = out_file.with_name("Modelfile")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sftpack-gguf-") as scratch, \
            atomic_file(out_file, "rb") as gguf_handle:
        settings_file = Path(scratch) / "settings.json"
        settings["report"] = str(Path(scratch) / "failure.json")
        settings_file.write_text(json.dumps(settings), encoding="utf-8")
        _convert(tool["dir"], settings_file, hf_dir, Path(gguf_handle.name), outtype, name, out_file)
        sha256, size = _sha256(Path(gguf_handle.name))
        with atomic_file(modelfile, "w", encoding="utf-8") as handle:
            handle.write(modelfile_text(out_file.name, _template_or_own(hf_dir, chat_template),
                                        stop_tokens, name, hf_dir))
    return {
        "format": "gguf", "file": out_file.name, "outtype": outtype, "bytes": size, "sha256": sha256,
        "name": name, "stop_tokens": list(stop_tokens), "modelfile": modelfile.name,
        "converter": converter_text, "llama_cpp_python": tool["llama_cpp_python"],
        "llama_cpp_commit": tool["llama_cpp_commit"], "gguf_py": tool["gguf_py"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def _convert(converter_dir: Path, settings_file: Path, hf_dir: Path, tmp_out: Path, outtype: str,
             name: str, out_file: Path) -> None:
    """Run llamacpp_convert.py in a child process; turn its failures into SftpackErrors."""
    command = [sys.executable, "-P", str(_DRIVER), str(converter_dir), str(settings_file), "--",
               str(hf_dir), "--outfile", str(tmp_out), "--outtype", outtype, "--model-name", name]
    done = subprocess.run(command, capture_output=True, text=True, errors="replace")
    if done.returncode == 0:
        return
    lines = done.stderr.strip().splitlines() or [""]
    report = Path(json.loads(settings_file.read_text(encoding="utf-8"))["report"])
    what = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else {}
    status = done.returncode if what else None  # statuses 3 to 5 come with a report
    if status == _UNSUPPORTED:
        raise SftpackError(
            f"{hf_dir}/config.json: architecture {what['architecture']!r} is not supported by llama.cpp's "
            f"converter (llama-cpp-python {importlib.metadata.version('llama-cpp-python')}); "
            f"`{sys.executable} {converter_dir}/convert_hf_to_gguf.py --print-supported-models` lists "
            "those it supports. Export with --format hf instead")
    if status == _OUT_OF_SPACE:
        raise SftpackError(f"{out_file}: {what['error'][0].lower() + what['error'][1:]} while writing the "
                           "GGUF; nothing was written. Free space there or choose another --out", exit_code=1)
    if status == _UNKNOWN_TOKEN:
        raise SftpackError(f"stop tokens {what['unknown_tokens']} are not in {hf_dir}'s vocabulary: "
                           "set data.stop_tokens to tokens the tokenizer has", exit_code=2)
    raise SftpackError(f"llama.cpp's converter failed on {hf_dir} (exit {done.returncode}); "
                       "its last lines:\n" + "\n".join(lines[-15:]), exit_code=1)


def _sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _template_or_own(hf_dir: Path, chat_template: str | None) -> str | None:
    """`chat_template`, else the folder's own (chat_template.jinja or tokenizer_config.json)."""
    if chat_template is not None:
        return chat_template
    jinja = hf_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = hf_dir / "tokenizer_config.json"
    own = json.loads(config.read_text(encoding="utf-8")).get("chat_template") if config.is_file() else None
    return own if isinstance(own, str) else None


def modelfile_text(gguf_name: str, chat_template: str | None, stop_tokens: list[str], name: str,
                   hf_dir: Path) -> str:
    """The Ollama Modelfile for `gguf_name` (in the same folder).

    Ollama templates are Go templates, not Jinja. When the model's template renders
    conversations exactly as ChatML does, TEMPLATE is Ollama's ChatML form (and SYSTEM the
    template's default system prompt, if it adds one); otherwise TEMPLATE is left out and
    Ollama picks a template from the GGUF's tokenizer.chat_template itself.
    """
    lines = [f"# Ollama Modelfile for {name}, written by sftpack beside {gguf_name}.",
             f"#   ollama create {name} -f Modelfile && ollama run {name}",
             f"FROM ./{gguf_name}"]
    system = _chatml_system(hf_dir, chat_template) if chat_template is not None else False
    if system is False:
        lines.append("# No TEMPLATE: the chat template is not ChatML; Ollama derives one from the GGUF's "
                     "tokenizer.chat_template.")
    else:
        lines.append(f'TEMPLATE """{_CHATML_GO}"""')
        if system:
            lines.append(f'SYSTEM """{system}"""')
    lines += [f"PARAMETER stop {json.dumps(token)}" for token in stop_tokens]
    return "\n".join(lines) + "\n"


def _chatml_system(hf_dir: Path, chat_template: str) -> str | None | bool:
    """False: `chat_template` does not render as ChatML. Else the default system prompt it
    adds to a conversation without one (None: it adds none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)

    def render(messages):
        try:
            return tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=False,
                                                 add_generation_prompt=True)
        except Exception:  # a template that rejects the probe (no system role, ...) is not ChatML
            return None

    def chatml(messages):
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + \
            "<|im_start|>assistant\n"

    turns = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
             {"role": "user", "content": "Q2"}]
    with_system = [{"role": "system", "content": "S"}, *turns]
    if render(with_system) != chatml(with_system):
        return False
    rendered = render(turns)
    if rendered == chatml(turns):
        return None
    head = "<|im_start|>system\n"
    tail = "<|im_end|>\n" + chatml(turns)
    if rendered and rendered.startswith(head) and rendered.endswith(tail):
        return rendered[len(head):-len(tail)]
    return False


def chat(gguf_file: str | os.PathLike, prompt: str, max_tokens: int = 64) -> str:
    """One user turn through llama.cpp (llama-cpp-python), greedy: the reply's text.

    The prompt is rendered with the GGUF's own chat template and generation stops on its
    stop tokens, as llama.cpp's chat does; `make export` shows the demo model's answer.
    """
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_file), n_ctx=1024, n_threads=os.cpu_count(), seed=0, verbose=False)
    done = llm.create_chat_completion([{"role": "user", "content": prompt}], temperature=0.0,
                                      max_tokens=max_tokens)
    return done["choices"][0]["message"]["content"]
