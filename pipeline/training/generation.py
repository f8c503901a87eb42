"""Greedy answers from a model in training: the before/after evidence a run shows."""

from __future__ import annotations

import torch


def greedy(model, tokenizer, prompt: list[int], max_new_tokens: int) -> str:
    """Decode `max_new_tokens` greedily after the token ids `prompt` (special tokens kept)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt], device=device), attention_mask=torch.ones(1, len(prompt),
                             dtype=torch.long, device=device), max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    model.train(was_training)
    return tokenizer.decode(out[0, len(prompt):], skip_special_tokens=False)


def answer_prompts(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers to user prompts rendered with the tokenizer's chat template, cut at eos."""
    answers = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        text = greedy(model, tokenizer, list(ids), max_new_tokens)
        answers.append(text.split(tokenizer.eos_token)[0].strip() if tokenizer.eos_token else text.strip())
    return answers
