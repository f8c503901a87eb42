"""What each report finding means: its title, a one-line explanation, the flag or config key that
changes it, how much it weighs when ranking, and whether it blocks training (the verdict).

Kinds from masking's audit (`sftpack.templates.turn_targets.AUDIT_KEYS`) count turns or
sequences; the report ranks them by the conversations they touch, like every other finding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FIX, CARE = "fix", "care"
"""Severities: FIX means the data will not be learnt as written; CARE means check before training."""


@dataclass(frozen=True)
class Kind:
    title: str
    """Human label shown in the report."""
    explanation: str
    """One line: what goes wrong in training."""
    change: str
    """The flag or config key (or data edit) that changes it."""
    weight: float
    """Impact per affected example when ranking (share of examples x weight)."""
    severity: str
    """FIX or CARE."""


_TEMPLATE = "--chat-template FILE (data.chat_template) with a template that renders them"
KINDS: dict[str, Kind] = {
    "tool_calls_not_rendered": Kind(
        "Tool calls the template cannot render", "the chat template drops these assistant tool calls, so the "
        "model is never trained to call tools", _TEMPLATE, 1.0, FIX),
    "reasoning_not_rendered": Kind(
        "Reasoning the template does not render", "the template drops reasoning_content, so it is not trained",
        _TEMPLATE + ", or --reasoning drop (data.reasoning)", 1.0, FIX),
    "turns_without_stop": Kind(
        "Turns without a stop token", "trained turns end in no stop token: the model learns not to stop",
        "--chat-template FILE (data.chat_template) whose assistant turns end in a stop token", 1.0, FIX),
    "spans_with_role_header": Kind(
        "Trained text holding a role header", "trained spans include another turn's header: the model learns "
        "to write the user's turn", "--turns auto (data.turns) or a fixed --chat-template", 1.0, FIX),
    "rejected": Kind(
        "Rejected lines", "lines fail validate's checks; pack stops on them unless rejects are allowed",
        "fix the lines (sftpack validate lists each with its rule), or data.allow_rejects: true", 1.0, FIX),
    "answers_truncated": Kind(
        "Answers cut by max_length", "the answer is cut mid-way: the model learns to stop mid-answer",
        "--max-length N (data.max_length), or --truncation drop (data.truncation)", 1.0, FIX),
    "no_trained_tokens": Kind(
        "Examples with nothing trained", "no assistant token is trained: pack drops them",
        "--train-on all (data.train_on), or a template that renders their turns", 0.9, CARE),
    "too_long": Kind(
        "Examples over max_length", "examples longer than max_length are dropped whole",
        "--max-length N (data.max_length), or --truncation truncate (data.truncation)", 1.0, CARE),
    "trains_unpacked": Kind(
        "Rows that train unpacked", "this model cannot keep packed sequences apart on this machine, so each "
        "packed row trains as one padded row per sequence: exact, but more padding and fewer tokens/s",
        "install the kernels named on a GPU, or data.packing_isolation: require to refuse", 0.1, CARE),
    "split_conversations": Kind(
        "Conversations split into sequences", "the template renders earlier turns unlike at inference, so the "
        "conversation trains as several sequences (its prompt tokens repeat)",
        "--turns whole (data.turns) trains one sequence as rendered", 0.3, CARE),
    "turns_rendered_differently": Kind(
        "Turns trained unlike inference", "with --turns whole these turns are trained as the full rendering "
        "shows them, not as the model sees them when it answers", "--turns auto (data.turns)", 0.6, CARE),
    "exact_duplicates": Kind(
        "Duplicate conversations", "repeats weigh those examples double in training",
        "deduplicate the inputs (each row names the earlier copy)", 0.8, CARE),
    "similar_prompts": Kind(
        "Near-identical prompts", "the same question again weighs its answer double, or teaches two answers "
        "to one question", "check the answers agree; keep one or a few per prompt", 0.25, CARE),
    "short_answers": Kind(
        "Very short answers", "very short answers teach terse replies", "check they are intended", 0.8, CARE),
    "language_mix": Kind(
        "Other languages", "a few stray languages teach switching", "check the mix is intended", 0.5, CARE),
    "extreme_lengths": Kind(
        "Extreme lengths", "far longer or shorter than most examples: pasted documents, logs, cut answers",
        "look at the rows; --max-length N (data.max_length) bounds them", 0.3, CARE),
}
MASK_KINDS = ("tool_calls_not_rendered", "reasoning_not_rendered", "turns_without_stop", "spans_with_role_header",
              "split_conversations", "turns_rendered_differently")
"""Findings counted by masking's audit, per conversation."""


def mask_message(kind: str, count: int, examples: int | None, split_extra_tokens: int = 0) -> str:
    """A masking finding's count in words; `examples` None when unknown (packed folders made before
    pack counted them)."""
    if kind == "split_conversations":
        return f"{count:,} conversations, {split_extra_tokens:,} prompt tokens repeated"
    unit = "spans" if kind == "spans_with_role_header" else "turns"
    return f"{count:,} {unit}" + (f" in {examples:,} conversations" if examples is not None else "")


def finding(kind: str, count: int, total: int, message: str, rows: list[str], advice: str | None = None
            ) -> dict[str, Any]:
    """One finding as report.json holds it.

    Args:
        kind: a KINDS key.
        count: examples (or lines) affected.
        total: examples (valid + rejected) the share is taken of.
        message: what was found, with the numbers.
        rows: `file:line` strings to look at (with a note in brackets).
        advice: what to do; KINDS[kind].change by default.

    Returns:
        {kind, count, share, impact, message, rows, advice, title, explanation, change, severity}.
    """
    about = KINDS[kind]
    share = count / total if total else 0.0
    return {"kind": kind, "count": count, "share": round(share, 4), "impact": round(share * about.weight, 4),
            "message": message, "rows": rows, "advice": advice or about.change, "title": about.title,
            "explanation": about.explanation, "change": about.change, "severity": about.severity}


def verdict(found: list[dict[str, Any]]) -> dict[str, Any]:
    """Ready to train, Train with care or Fix first, with the findings that decide it.

    FIX findings decide "Fix first"; CARE findings touching at least 1% of the examples decide
    "Train with care"; smaller ones are listed but do not change the verdict.
    """
    blocking = [f for f in found if f["severity"] == FIX and f["count"]]
    caution = [f for f in found if f["severity"] == CARE and f["share"] >= 0.01]
    if blocking:
        label, deciding = "Fix first", blocking
    elif caution:
        label, deciding = "Train with care", caution
    else:
        label, deciding = "Ready to train", []
    also = [f for f in caution if f not in deciding]
    return {"label": label, "reasons": [f"{f['title']}: {_amount(f)}" for f in (deciding + also)[:4]]}


def _amount(found: dict[str, Any]) -> str:
    """How much a finding touches, in words: masking's counts as they are, else examples (lines)."""
    if found["kind"] in MASK_KINDS:
        return found["message"]
    unit = "lines" if found["kind"] == "rejected" else "examples"
    return f"{found['count']:,} {unit} ({found['share']:.1%})"
