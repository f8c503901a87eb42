"""A chat template, compiled once, and what sftpack learns about it by rendering.

`ChatRenderer.render` equals `tokenizer.apply_chat_template(..., tokenize=False)`. Beyond that the
renderer knows the template's control text, measured from the tokenizer and a few probe renders,
never from the template's source:

  stop_markers   the texts a model emits to end a turn: the `stop_tokens` option, else the
                 tokenizer's eos and the ids of the folder's generation_config.json
                 `eos_token_id`, else inferred from probe renders (pipeline/templates/stop_markers.py)
  implied_stop   for templates that write no end marker after a turn (GLM), the stop marker that
                 opens the next turn (<|user|>), which is what the model emits to stop
  role_headers   the text that opens a user or system message (<|im_start|>user, [INST], ...),
                 for the audit that no trained span holds one

Messages are normalised once per conversation (`prepare`): reasoning is read from
`reasoning_content`, `reasoning` or `thinking`, or from a `<think>...</think>` block at the start of
an assistant turn's content, and given to the template under all three names (Qwen3 and GLM read
`reasoning_content`, gpt-oss `thinking`); tool-call `arguments` are objects, or JSON strings for
templates that concatenate them (DeepSeek V3.1), found by the first render that needs them.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Callable, TypeVar

import jinja2

from sftpack.errors import SftpackError
from sftpack.templates.fields import REASONING_FIELDS, RESERVED_TEMPLATE_ARGS, TRAIN_FLAG
from sftpack.templates.jinja_env import compile_template, plain_data
from sftpack.templates.stop_markers import StopMarkers, generation_config_markers, given_markers, infer_markers
from sftpack.templates.template_forms import TemplateForms, probe_forms

PROBE_MESSAGE = {"role": "user", "content": "Continue."}
"""Appended after a final assistant turn to see what the template writes after it."""
_SENTINEL = "\u2063sftpack\u2063"
_THINK_BLOCK = re.compile(r"\s*<think>(.*?)</think>\s*", re.S)
T = TypeVar("T")
RENDER_ERRORS = (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError)
"""What a template raises on data it does not accept (raise_exception, undefined keys, str + dict)."""


def with_string_arguments(renderer: "ChatRenderer", messages: list[dict], attempt: Callable[[], T]) -> T:
    """`attempt()`; when it raises a render error on a conversation with tool calls, once more with
    tool-call arguments as JSON strings (templates that concatenate `arguments`, DeepSeek V3.1, raise
    on objects). The renderer keeps the form that worked."""
    try:
        return attempt()
    except RENDER_ERRORS:
        if renderer.arguments_as_string or not any(m.get("tool_calls") for m in messages):
            raise
        renderer.arguments_as_string = True
        try:
            return attempt()
        except RENDER_ERRORS:
            renderer.arguments_as_string = False
            raise


def split_reasoning(message: dict) -> tuple[str | None, str]:
    """(reasoning or None, content without it) of one message: the first of REASONING_FIELDS that is
    a string, else a `<think>...</think>` block that opens the content."""
    content = message.get("content")
    content = content if isinstance(content, str) else ""
    for field in REASONING_FIELDS:
        if isinstance(message.get(field), str):
            return message[field], content
    if message.get("role") == "assistant" and content.lstrip().startswith("<think>"):
        match = _THINK_BLOCK.match(content)
        if match:
            return match.group(1).strip("\n"), content[match.end():]
    return None, content


def _arguments_as(tool_calls: list, as_string: bool) -> list:
    """Tool calls with `arguments` as objects (parsed from JSON strings) or as JSON strings."""
    out = []
    for call in tool_calls:
        function = dict(call.get("function") or {})
        arguments = function.get("arguments")
        if as_string and not isinstance(arguments, str):
            function["arguments"] = json.dumps(arguments, ensure_ascii=False)
        elif not as_string and isinstance(arguments, str):
            try:
                parsed = json.loads(arguments)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                function["arguments"] = parsed
        out.append({**call, "function": function})
    return out


class ChatRenderer:
    """A compiled chat template plus the variables `apply_chat_template` gives it.

    Rendering equals `tokenizer.apply_chat_template(messages, tools=tools, chat_template=template,
    add_generation_prompt=..., tokenize=False)`: messages lose None-valued keys, are converted to
    plain JSON data, and the template sees the tokenizer's named special tokens (bos_token,
    eos_token, ...), raise_exception, strftime_now and tojson.
    """

    def __init__(self, tokenizer: Any, chat_template: str | None = None, template_kwargs: dict | None = None,
                 stop_tokens: tuple[str, ...] | list[str] | None = None):
        """Args:
            tokenizer: a Hugging Face tokenizer; its special tokens become template variables.
            chat_template: Jinja source overriding the tokenizer's template; None uses the
                tokenizer's (its "default" entry when it has several).
            template_kwargs: extra template variables for every render (`data.chat_template_kwargs`:
                enable_thinking, reasoning_effort, ...); a record's own `chat_template_kwargs` win.
            stop_tokens: the stop markers (`data.stop_tokens`); None reads generation_config.json,
                else infers them from probe renders (pipeline/templates/stop_markers.py).

        Raises:
            SftpackError: no template, the template does not compile, a reserved template
                argument, or a stop token the tokenizer lacks.
        """
        if chat_template is None:
            try:
                chat_template = tokenizer.get_chat_template()
            except ValueError as err:
                raise SftpackError(f"chat template: {err}") from None
        self.template: str = chat_template
        try:
            self._compiled = compile_template(chat_template)
        except jinja2.TemplateSyntaxError as err:
            raise SftpackError(
                f"chat template line {err.lineno}: {err.message}; fix the Jinja syntax"
            ) from None
        self._variables = plain_data(dict(tokenizer.special_tokens_map))
        self.template_kwargs: dict[str, Any] = dict(template_kwargs or {})
        reserved = sorted(RESERVED_TEMPLATE_ARGS & self.template_kwargs.keys())
        if reserved:
            raise SftpackError(f"chat_template_kwargs: {', '.join(reserved)} cannot be set: sftpack passes them itself")
        added = sorted(map(str, tokenizer.added_tokens_encoder), key=len, reverse=True)
        self._added = frozenset(added)
        self.added_re = re.compile("|".join(map(re.escape, added)) or "(?!)")  # (?!): never matches
        self._added_max = max(map(len, added), default=1)
        self.arguments_as_string = False
        """Tool-call arguments go to the template as JSON strings (set when objects make it raise)."""
        self._probed: dict[str, Any] = {}
        self.memo: dict[str, Any] = {}
        """What masking learns once per template (pipeline/templates/masking.py: skeletons per conversation shape)."""
        self.forms: TemplateForms = probe_forms(self)
        """How the template reads tools and reasoning (pipeline/templates/template_forms.py)."""
        self.stop: StopMarkers = (given_markers(tokenizer, stop_tokens) if stop_tokens
                                  else generation_config_markers(tokenizer, self._added)
                                  or infer_markers(self, tokenizer, self._added))
        """The stop markers in use and where they come from."""

    @property
    def variables_read(self) -> frozenset[str]:
        """The variables the template reads that no render sets itself (jinja2.meta on its source):
        the ones a template argument can give."""
        if "variables_read" not in self._probed:
            from jinja2 import meta

            read = meta.find_undeclared_variables(self._compiled.environment.parse(self.template))
            self._probed["variables_read"] = frozenset(read - set(self._variables) - {"raise_exception", "strftime_now"})
        return self._probed["variables_read"]

    @property
    def stop_markers(self) -> tuple[str, ...]:
        """The texts a model emits to end a turn, longest first."""
        return self.stop.tokens

    @property
    def template_sha256(self) -> str:
        """Hex sha256 of the template source (utf-8)."""
        return hashlib.sha256(self.template.encode("utf-8")).hexdigest()

    # ------------------------------------------------------------ rendering

    def render(self, messages: list[dict], tools: list[dict] | None = None,
               add_generation_prompt: bool = False, kwargs: dict | None = None) -> str:
        """Render one conversation to text, exactly as apply_chat_template(tokenize=False) does.

        Raises:
            jinja2.TemplateError (and TypeError, ...): whatever the template raises.
        """
        return self.render_prepared(*self.prepare(messages, tools, kwargs=kwargs)[:2], add_generation_prompt)

    def prepare(self, messages: list[dict], tools: list[dict] | None, reasoning: str = "train",
                kwargs: dict | None = None, arguments_as_string: bool | None = None,
                ) -> tuple[list[dict], dict[str, Any], list[str | None]]:
        """The messages and template variables as the template sees them (once per conversation).

        Args:
            messages: the conversation as read.
            tools: tool schemas, or None.
            reasoning: "train"/"mask" give each assistant turn's reasoning to the template under
                every name in REASONING_FIELDS; "drop" removes it.
            kwargs: the conversation's own template arguments (over `template_kwargs`).
            arguments_as_string: tool-call arguments as JSON strings; None: `arguments_as_string`.

        Returns:
            (messages, template variables: tools and arguments, the reasoning of each message or None).

        Raises:
            TypeError: kwargs set a name sftpack passes itself (a render error: the record is dropped).
        """
        as_string = self.arguments_as_string if arguments_as_string is None else arguments_as_string
        prepared, reasonings = [], []
        for original in messages:
            thought, content = split_reasoning(original)
            message = {k: v for k, v in original.items()
                       if v is not None and k not in REASONING_FIELDS and k != TRAIN_FLAG}
            if message.get("role") != "assistant":
                thought = None
            else:
                message["content"] = content
                if thought is not None and reasoning != "drop":
                    message.update(dict.fromkeys(REASONING_FIELDS, thought))
                    message = self.forms.with_reasoning(message, thought)
                if message.get("tool_calls"):
                    message["tool_calls"] = _arguments_as(message["tool_calls"], as_string)
            prepared.append(message)
            reasonings.append(thought if reasoning != "drop" else None)
        if kwargs and RESERVED_TEMPLATE_ARGS & kwargs.keys():
            raise TypeError(f"chat_template_kwargs cannot set {sorted(RESERVED_TEMPLATE_ARGS & kwargs.keys())}")
        variables = plain_data({**self.template_kwargs, **(kwargs or {}), "tools": self.forms.tools(tools)})
        return plain_data(prepared), variables, reasonings

    def try_render(self, messages: list[dict], variables: dict[str, Any]) -> str | None:
        """Plain messages and variables rendered as a training example, with the template arguments
        (as every render has them); None when the template raises."""
        try:
            variables = plain_data({**self.template_kwargs, **variables})
            return self.render_prepared(plain_data(messages), variables, False)
        except RENDER_ERRORS:
            return None

    def render_or_none(self, messages: list[dict], tools: list[dict] | None, arguments_as_string: bool = False,
                       add_generation_prompt: bool = False) -> str | None:
        """A probe render: the text, or None when the template raises on it."""
        try:
            msgs, variables, _ = self.prepare(messages, tools, arguments_as_string=arguments_as_string)
            return self.render_prepared(msgs, variables, add_generation_prompt)
        except RENDER_ERRORS:
            return None

    def render_prepared(self, messages: list[dict], variables: dict[str, Any], add_generation_prompt: bool) -> str:
        """Render messages and variables from `prepare`."""
        return self._compiled.render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            **{"documents": None, **self._variables, **variables},
        )

    # ------------------------------------------------------------ what the renders tell

    def split_point(self, a: str, b: str) -> int:
        """Where a and b part: their common prefix length, moved back to the start of an added
        token (<|user|>, <|endoftext|>) it would cut, so "...<|end|>\\n<|endoftext|>" and
        "...<|end|>\\n<|user|>" part after the newline, not after "<|".
        """
        end = common_prefix_len(a, b)
        for text in (a, b):
            window = max(0, end - self._added_max + 1)
            for match in self.added_re.finditer(text, window, end + self._added_max):
                if match.start() < end < match.end():
                    end = match.start()
                    break
        return end

    def first_stop_end(self, text: str, after: int = 0) -> int | None:
        """Where the first stop marker in `text[after:]` ends: a turn is trained up to there, and what
        the template writes after it (Phi-3's final eos, Command-R's next-turn opener) never is.
        `after` is where the turn's own text ends: a marker before it is followed by more of the
        same turn (gpt-oss's <|end|> between analysis and final), so it does not stop the turn."""
        found = [text.find(m, after) + len(m) for m in self.stop_markers if text.find(m, after) >= 0]
        return min(found) if found else None

    def _probe(self, messages: list[dict]) -> str | None:
        """A probe conversation rendered, with no tools or an empty list (Hermes needs one); None
        when the template refuses both."""
        for tools in (None, []):
            try:
                return self.render(messages, tools)
            except RENDER_ERRORS:
                continue
        return None

    @property
    def implied_stop(self) -> str | None:
        """The stop marker that opens the turn after an assistant turn, for templates that write no
        end marker of their own (GLM: "<|user|>"); None for the others."""
        if "implied_stop" not in self._probed:
            plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
            found = None
            text, continued = self._probe(plain), self._probe(plain + [PROBE_MESSAGE])
            if text and continued and self.first_stop_end(text[text.rfind("Hello"):]) is None:
                at = self.split_point(text, continued)
                follows = continued[at:].lstrip()
                found = next((m for m in self.stop_markers if follows.startswith(m)), None)
            self._probed["implied_stop"] = found
        return self._probed["implied_stop"]

    @property
    def role_headers(self) -> tuple[str, ...]:
        """The text that opens a user or a system message, from the last stop marker (or the
        start) to the message's content, stripped: "<|im_start|>user", "<|start_header_id|>user
        <|end_header_id|>", "[INST]". Only headers holding an added token count."""
        if "role_headers" not in self._probed:
            headers = set()
            for role in ("system", "user"):
                text = self._probe([{"role": role, "content": _SENTINEL}]
                                   + ([] if role == "user" else [{"role": "user", "content": "Hi"}]))
                if text is None:
                    continue
                at = text.find(_SENTINEL)
                if at < 0:
                    continue
                before = text[:at].rstrip()
                # A header may itself be a stop marker (Phi-3's <|user|> ends GLM turns): keep it.
                own = next((m for m in self.stop_markers if before.endswith(m)), "")
                search = before[: len(before) - len(own)]
                cut = max((search.rfind(m) + len(m) for m in self.stop_markers if m in search), default=0)
                header = before[cut:].strip()
                bos = self._variables.get("bos_token")
                if cut == 0 and isinstance(bos, str) and bos and header.startswith(bos) \
                        and self.added_re.search(header[len(bos):]):  # ChatML's bos is <|im_start|> itself
                    header = header[len(bos):].strip()
                if header and self.added_re.search(header):
                    headers.add(header)
            self._probed["role_headers"] = tuple(sorted(headers))
        return self._probed["role_headers"]


def common_prefix_len(a: str, b: str) -> int:
    """Length of the longest common prefix; binary search over C-speed slice compares."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # invariant: a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo
