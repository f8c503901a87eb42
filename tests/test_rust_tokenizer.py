"""RustTokenizer (pipeline/templates/rust_tokenizer.py) against transformers' own tokenizer of the
same folder: every part the data stages read is equal, and a folder whose loading changes the
backend is left to transformers. The Jinja sandbox (pipeline/templates/jinja_env.py) against
`apply_chat_template` on what real templates use (tests/test_real_templates.py renders those)."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoTokenizer

from sftpack.store.fingerprint import tokenizer_identity
from sftpack.templates.chat_template import ChatRenderer
from sftpack.templates.rust_tokenizer import RustTokenizer
from sftpack.templates.tokenizer import load_tokenizer

TEXTS = ["Hello world!", "  two  spaces\nand a tab\t.", "<|im_start|>user\nHi<|im_end|>", "émoji 🙂 and 中文",
         "<think>\nx\n</think>", "[INST] a [/INST]", ""]


def assert_same_parts(light: RustTokenizer, reference) -> None:
    assert light.special_tokens_map == reference.special_tokens_map
    assert light.all_special_tokens == reference.all_special_tokens
    for name in ("bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "eos_token_id", "pad_token_id"):
        assert getattr(light, name) == getattr(reference, name), name
    assert light.added_tokens_encoder == reference.added_tokens_encoder
    assert {i: str(t) for i, t in light.added_tokens_decoder.items()} == \
        {i: str(t) for i, t in reference.added_tokens_decoder.items()}
    assert [t.special for t in light.added_tokens_decoder.values()] == \
        [t.special for t in reference.added_tokens_decoder.values()]
    assert light.get_vocab() == reference.get_vocab() and light.get_added_vocab() == reference.get_added_vocab()
    assert len(light) == len(reference)
    assert light.backend_tokenizer.to_str() == reference.backend_tokenizer.to_str()
    assert light.get_chat_template() == reference.get_chat_template()
    ids = [light.backend_tokenizer.encode(text, add_special_tokens=False).ids for text in TEXTS]
    assert ids == [reference(text, add_special_tokens=False).input_ids for text in TEXTS]
    for row in ids:
        assert light.convert_ids_to_tokens(row) == reference.convert_ids_to_tokens(row)
        assert light.convert_tokens_to_string(light.convert_ids_to_tokens(row)) == \
            reference.convert_tokens_to_string(reference.convert_ids_to_tokens(row))
        for skip in (False, True):
            assert light.decode(row, skip_special_tokens=skip) == reference.decode(row, skip_special_tokens=skip)
    assert light.batch_decode(ids) == reference.batch_decode(ids)
    assert light.convert_tokens_to_ids(["<|im_end|>", "not-a-token-xyz"]) == \
        reference.convert_tokens_to_ids(["<|im_end|>", "not-a-token-xyz"])
    assert tokenizer_identity(light, light.get_chat_template()) == \
        tokenizer_identity(reference, reference.get_chat_template())
    one, other = ChatRenderer(light), ChatRenderer(reference)
    assert (one.stop.as_manifest(), one.role_headers, one.implied_stop) == \
        (other.stop.as_manifest(), other.role_headers, other.implied_stop)


@pytest.mark.parametrize("name", ["default", "gpt_oss", "glm4_5", "seed_oss", "mistral_nemo", "qwen3"])
def test_every_part_the_stages_read_equals_transformers(name, model_dir, stand_in):
    """The default model's folder, and real templates' stand-ins (SmolLM2's tokenizer with the
    model's named and extra special tokens added, as save_pretrained writes them)."""
    folder = model_dir if name == "default" else stand_in(name)[0].name_or_path
    light = load_tokenizer(folder)
    assert isinstance(light, RustTokenizer)
    assert_same_parts(light, AutoTokenizer.from_pretrained(folder))


def _edit_config(folder, **changes):
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, **changes}), encoding="utf-8")


def _with_padding(folder):
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    data["padding"] = {"strategy": "BatchLongest", "direction": "Left", "pad_to_multiple_of": None, "pad_id": 2,
                       "pad_type_id": 0, "pad_token": "<|im_end|>"}
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")


DECLINED = {
    "a named token the backend lacks": lambda f: _edit_config(f, sep_token="<sep>"),
    "an extra special token the backend lacks": lambda f: _edit_config(f, extra_special_tokens=["<new>"]),
    "bos added by the post-processor": lambda f: _edit_config(f, add_bos_token=True),
    "a model-specific named token": lambda f: _edit_config(f, image_token="<|im_start|>"),
    "named templates": lambda f: _edit_config(f, chat_template=[{"name": "default", "template": "x"}]),
    "padding in tokenizer.json": _with_padding,
    "a legacy special_tokens_map.json": lambda f: (f / "special_tokens_map.json").write_text("{}"),
    "another tokenizer class": lambda f: _edit_config(f, tokenizer_class="PreTrainedTokenizerFast"),
}


@pytest.mark.parametrize("case", sorted(DECLINED))
def test_a_folder_whose_loading_changes_the_backend_is_left_to_transformers(case, model_dir, tmp_path):
    folder = tmp_path / "tokenizer"
    shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    DECLINED[case](folder)
    assert RustTokenizer.load(folder) is None
    assert not isinstance(load_tokenizer(folder), RustTokenizer)


SANDBOX_TEMPLATES = {
    "generation block": "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}A: {{ m.content }}"
                        "{% endgeneration %}{% else %}U: {{ m.content }}{% endif %}\n{% endfor %}",
    "tojson unescaped": "{{ messages | tojson }}|{{ messages[0] | tojson(indent=2, sort_keys=true) }}",
    "namespace and loop controls": "{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 1 %}"
                                   "{% break %}{% endif %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}",
    "dict and special tokens": "{{ dict(a=1).a }}{{ dict.fromkeys(['x']) }}{{ bos_token }}{{ eos_token }}",
    "trim and lstrip blocks": "  {% if true %}\n<{{ messages[-1].content }}>\n  {% endif %}\n",
}


@pytest.mark.parametrize("case", sorted(SANDBOX_TEMPLATES))
def test_templates_render_as_apply_chat_template_renders_them(case, model_dir):
    reference = AutoTokenizer.from_pretrained(model_dir)
    messages = [{"role": "user", "content": "<é & \"q\">"}, {"role": "assistant", "content": "ok"}]
    template = SANDBOX_TEMPLATES[case]
    ours = ChatRenderer(load_tokenizer(model_dir), template, stop_tokens=["<|im_end|>"]).render(messages)
    assert ours == reference.apply_chat_template(messages, chat_template=template, tokenize=False)


def test_a_namespace_refuses_underscore_names_and_raise_exception_raises(model_dir):
    import jinja2

    renderer = ChatRenderer(load_tokenizer(model_dir), stop_tokens=["<|im_end|>"])
    for source in ("{% set ns = namespace(_x=1) %}", "{{ raise_exception('no system role') }}"):
        with pytest.raises(jinja2.TemplateError):
            renderer._compiled.environment.from_string(source).render()
