"""Whether packed rows stay apart for this model, attention and installed kernels, decided by a probe.

    model config (AutoConfig) ──tiny_config──> the same layer kinds and attention settings,
                                               a few small layers, small width and vocabulary
    tiny random-init copy ──probe──> largest logit difference, packed row vs each sequence alone,
                                     for each way of feeding the row
    ──decide──> Isolation: route position_ids | boundaries | unpacked (+ why, in one line)

A packed row reaches the model the way TRL's padding-free collator builds it: no attention mask,
no cache, position_ids restarting per sequence. Two feeds are tried:

    feed          what the model gets                                        route when exact
    trl           position_ids + cu_seq_lens_q/k, max_length_q/k, seq_idx    boundaries (position_ids
                  (the collator's output as it is)                           alone leak) or position_ids
    position_ids  position_ids only (the boundary kwargs dropped)            position_ids

Masks built from restarting position_ids keep sdpa and eager attention apart; flash attention and
the varlen kernels of linear-attention and Mamba layers (causal-conv1d, mamba-ssm, fla) need the
boundary kwargs, and the reference PyTorch paths of those layers cannot use them (transformers
raises "can't keep packed sequences apart"). When neither feed is exact the run trains the same
packed rows unpacked (training.data.UnpackedCollator): one sequence per batch row, padded, with an
attention mask, so nothing is shared between sequences whatever the layers are.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from sftpack.errors import SftpackError

logger = logging.getLogger("sftpack.train")

ROUTES = ("position_ids", "boundaries", "unpacked")
"""How packed rows are kept apart: masks from position_ids; the boundary kwargs (cu_seq_lens_*,
max_length_*, seq_idx) the model's kernels accept; or not packed at all (one sequence per row)."""

BOUNDARY_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")
"""What TRL's padding-free collator adds besides position_ids (trl.trainer.sft_trainer)."""

PROBE_LENGTHS = (29, 17, 41, 13)
"""The probe's sequences: one longer than the tiny sliding window and the Mamba chunk, 100 tokens
in all so a 64-token linear-attention chunk is crossed inside a sequence and at a boundary."""

PROBE_VOCAB = 256
PROBE_WINDOW = 16
PROBE_CHUNK = 16

TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 1e-2}
"""Largest logit difference still called exact. In float32 exact feeds differ by < 1e-6 and the
smallest leak seen (a 3-tap convolution reading 2 tokens of the previous sequence) by ~1e-3;
half precision (flash kernels) can only tell leaks above its rounding."""

# Width and depth of the tiny copy, set where the config has the key. Mamba sizes keep
# heads * head_dim == expand (2) * hidden_size.
SMALL = {
    "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
    "vocab_size": PROBE_VOCAB, "max_position_embeddings": 512,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "shared_intermediate_size": 32,
    "moe_shared_expert_intermediate_size": 32, "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4,
    "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
    "linear_key_head_dim": 16, "linear_value_head_dim": 16, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
    "mamba_n_heads": 8, "mamba_d_head": 16, "mamba_d_ssm": 128, "mamba_d_state": 16, "mamba_n_groups": 1,
    "mamba_num_heads": 8, "mamba_head_dim": 16, "ssm_state_size": 16, "n_groups": 1, "state_size": 16,
    "n_mamba_heads": 8, "mamba_ngroups": 1, "mamba_expand": 2, "expand": 2,
    "chunk_size": PROBE_CHUNK, "mamba_chunk_size": PROBE_CHUNK,
    "depth": 1, "out_hidden_size": 64,  # a multimodal checkpoint's vision tower (not run)
}
PER_LAYER = ("layer_types", "layers_block_type")
"""Lists with one entry per layer: the copy keeps a prefix holding every kind."""
DROPPED = ("quantization_config", "auto_map", "_name_or_path", "architectures", "transformers_version", "dtype")


@dataclass(frozen=True)
class Isolation:
    """What the probe decided; recorded in sftpack_run.json under `isolation`."""

    route: str
    """position_ids | boundaries | unpacked (see ROUTES)."""
    model_type: str
    attn_implementation: str
    max_difference: float | None
    """The probe's largest logit difference on the feed trained with; for unpacked, the smallest
    difference any packed feed reached (None when every feed raised)."""
    reason: str
    """One line: why this route."""
    feed: str | None = None
    """The feed trained with: trl (TRL's padding-free collator as it is), position_ids (its boundary
    kwargs dropped: training.data.PositionIdsCollator), None (unpacked: training.data.UnpackedCollator)."""
    advice: str = ""
    """What to install to train packed (unpacked route only)."""
    feeds: dict[str, Any] = field(default_factory=dict)
    """Per feed: its largest difference, or the error it raised; `leak`: the row run as one sequence."""

    @property
    def packed(self) -> bool:
        return self.route != "unpacked"


def model_config(path: str):
    """The model's config (AutoConfig), or None when the folder has none (load_model says why)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return None


def causal_lm_class(config):
    """The class AutoModelForCausalLM builds for `config` (None when it has no causal LM)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM._model_mapping[type(config)]
    except (KeyError, ValueError):
        return None


def tiny_config(config):
    """A config of the same class, layer kinds and attention settings, a few small layers.

    Every distinct layer kind (layer_types, layers_block_type, jamba's attention/expert offsets,
    index lists such as full_attn_idxs) stays; the sliding window shrinks to PROBE_WINDOW so the
    probe's sequences cross it, Mamba chunks to PROBE_CHUNK. Sub-configs (a multimodal checkpoint's
    text_config, vision_config) shrink the same way.
    """
    raw = _shrink({k: v for k, v in config.to_dict().items() if k not in DROPPED})
    for key, value in raw.items():
        if isinstance(value, dict) and "hidden_size" in value:
            raw[key] = _shrink({k: v for k, v in value.items() if k not in DROPPED})
    return type(config).from_dict(raw)


def _shrink(raw: dict[str, Any]) -> dict[str, Any]:
    layers = int(raw.get("num_hidden_layers") or 2)
    keep = 2
    for key in PER_LAYER:
        kinds = raw.get(key)
        if isinstance(kinds, list) and len(kinds) == layers:
            keep = max(keep, max(kinds.index(kind) for kind in set(kinds)) + 1)
    for key in ("attn_layer_offset", "expert_layer_offset"):
        if isinstance(raw.get(key), int):
            keep = max(keep, raw[key] + 1)
    index_lists = [k for k, v in raw.items() if isinstance(v, list) and v and all(isinstance(i, int) for i in v)
                   and (k.endswith(("idxs", "indices", "ids")) or k == "mlp_only_layers") and k not in PER_LAYER]
    for key in index_lists:
        keep = max(keep, min(raw[key]) + 1)
    keep = min(keep, layers)
    for key, value in list(raw.items()):
        if isinstance(value, list) and len(value) == layers and key not in index_lists:
            raw[key] = value[:keep]
    for key in index_lists:
        raw[key] = [i for i in raw[key] if i < keep]
    if "num_hidden_layers" in raw:
        raw["num_hidden_layers"] = keep
    raw.update({k: v for k, v in SMALL.items() if k in raw})
    if "head_dim" in raw:
        # Attention head width; Mamba-2's own head_dim (no attention) follows its heads instead.
        raw["head_dim"] = 16
    if isinstance(raw.get("sliding_window"), int):
        raw["sliding_window"] = min(raw["sliding_window"], PROBE_WINDOW)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if isinstance(raw.get(key), int) and raw[key] >= PROBE_VOCAB:
            raw[key] = PROBE_VOCAB - 1
        elif isinstance(raw.get(key), list):
            raw[key] = [min(i, PROBE_VOCAB - 1) for i in raw[key]]
    return raw


def has_sinks(config) -> bool:
    """Whether the model's attention has learned sinks (gpt-oss): flash-attn 2 cannot run them."""
    cls = causal_lm_class(config)
    if cls is None:
        return False
    try:
        with torch.device("meta"):
            model = cls(tiny_config(config))
    except Exception:  # noqa: BLE001 - an unknown architecture: the probe reports its error
        return False
    return any(name.endswith(".sinks") for name, _ in model.named_parameters())


def _feeds(lengths: tuple[int, ...], ids: torch.Tensor, device: str) -> dict[str, dict[str, Any]]:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    row = {"input_ids": ids.tolist(), "labels": ids.tolist(), "seq_lengths": list(lengths)}
    trl = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([row])
    trl.pop("labels")
    trl = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in trl.items()}
    return {"trl": trl, "position_ids": {k: v for k, v in trl.items() if k not in BOUNDARY_KEYS}}


def probe(config, attn_implementation: str, dtype: str = "float32", device: str = "cpu") -> dict[str, Any]:
    """Run a packed row through a tiny random-init copy of `config` and each sequence alone.

    Returns:
        {"trl": difference or error text, "position_ids": ..., "leak": the difference when the row
        runs as one sequence (what no isolation looks like)}; {"build": error text} when no tiny
        copy could be built.

    Raises:
        SftpackError: the tiny copy cannot run a sequence on its own (nor would the model).
    """
    from transformers import AutoModelForCausalLM

    try:
        tiny = tiny_config(config)
        with _seeded(0):
            model = AutoModelForCausalLM.from_config(tiny, attn_implementation=attn_implementation,
                                                     dtype=getattr(torch, dtype)).to(device).eval()
    except Exception as err:  # noqa: BLE001 - an architecture the copy cannot shrink: decide() trains unpacked
        return {"build": f"{type(err).__name__}: {_first_line(err)}"}
    with _seeded(1):
        ids = torch.randint(3, PROBE_VOCAB, (sum(PROBE_LENGTHS),))
    ids = ids.to(device)
    with torch.no_grad():
        try:
            alone, start = [], 0
            for length in PROBE_LENGTHS:
                alone.append(model(input_ids=ids[None, start:start + length], use_cache=False).logits[0].float())
                start += length
            alone = torch.cat(alone)
            leak = model(input_ids=ids[None], use_cache=False).logits[0].float()
        except Exception as err:  # noqa: BLE001
            raise SftpackError(f"model type {config.model_type} with attn_implementation {attn_implementation}: "
                               f"a forward pass fails ({type(err).__name__}: {_first_line(err)})") from None
        out: dict[str, Any] = {}
        for name, feed in _feeds(PROBE_LENGTHS, ids, device).items():
            try:
                out[name] = float((model(**feed, use_cache=False).logits[0].float() - alone).abs().max())
            except Exception as err:  # noqa: BLE001 - a kernel path that refuses packed rows
                out[name] = f"{type(err).__name__}: {_first_line(err)}"
        out["leak"] = float((leak - alone).abs().max())
    return out


def decide(config, attn_implementation: str, dtype: str = "float32", device: str = "cpu") -> Isolation:
    """Probe, then pick the route (module docstring). Raises SftpackError as `probe` does."""
    feeds = probe(config, attn_implementation, dtype, device)
    if "build" in feeds:  # nothing to measure: unpacked is exact whatever the layers
        return Isolation(route="unpacked", model_type=config.model_type, attn_implementation=attn_implementation,
                         max_difference=None, reason=f"no tiny copy of its config to check packing on "
                         f"({feeds['build']})", feed=None, feeds=feeds)
    tolerance = TOLERANCE.get(dtype, TOLERANCE["float32"])
    exact = {name: isinstance(feeds[name], float) and feeds[name] <= tolerance for name in ("trl", "position_ids")}
    model_type = config.model_type
    numbers = [v for k, v in feeds.items() if k != "leak" and isinstance(v, float)]
    if exact["trl"]:
        feed, used = "trl", feeds["trl"]
        route = "position_ids" if exact["position_ids"] else "boundaries"
    elif exact["position_ids"]:
        feed, used, route = "position_ids", feeds["position_ids"], "position_ids"
    else:
        feed, used, route = None, min(numbers) if numbers else None, "unpacked"
    why = {"position_ids": "masks from position_ids keep sequences apart",
           "boundaries": "the model's kernels take the sequence boundaries (cu_seq_lens, seq_idx)"}.get(route) \
        or _why_not(feeds)
    return Isolation(route=route, model_type=model_type, attn_implementation=attn_implementation,
                     max_difference=used, reason=why, feed=feed, feeds=feeds)


def _why_not(feeds: dict[str, Any]) -> str:
    """Why neither feed is exact, in one clause."""
    leaks = [feeds[k] for k in ("trl", "position_ids") if isinstance(feeds[k], float)]
    seen = f"sequences in a packed row see each other (largest logit difference {min(leaks):.2g})" if leaks else ""
    if isinstance(feeds["trl"], str):
        return f"{feeds['trl']}; with position_ids alone " + (seen or str(feeds["position_ids"]))
    return seen


def install_advice(config, device: str) -> str:
    """What to install on a GPU so this model keeps packed rows apart."""
    text = config.to_dict()
    wants = []
    kinds = {str(k) for key in PER_LAYER for k in (text.get(key) or [])}
    if any("linear" in k for k in kinds) or "linear_conv_kernel_dim" in text:
        wants.append("causal-conv1d and flash-linear-attention (pip install causal-conv1d flash-linear-attention)")
    if any(k in text for k in ("mamba_d_state", "ssm_state_size", "state_size", "mamba_n_heads")) or "mamba" in kinds:
        wants.append("causal-conv1d and mamba-ssm (pip install causal-conv1d mamba-ssm)")
    if "conv_L_cache" in text or "conv" in kinds:
        wants.append("causal-conv1d (pip install causal-conv1d)")
    if has_sinks(config):
        wants.append("a flash kernel with attention sinks (pip install kernels: model.attn_implementation auto "
                     "then picks kernels-community/vllm-flash-attn3)")
    if not wants:
        wants.append("flash-attn (pip install flash-attn; model.attn_implementation=flash_attention_2)")
    where = "" if device.startswith("cuda") else " on a CUDA GPU"
    return f"install {' and '.join(dict.fromkeys(wants))}{where}"


def refusal(isolation: Isolation) -> SftpackError:
    """The error of `data.packing_isolation: require` when rows would train unpacked."""
    return SftpackError(
        f"data.packing_isolation require: model type {isolation.model_type} with {isolation.attn_implementation} "
        f"attention cannot keep packed rows apart here: {isolation.reason}. To train packed, "
        f"{isolation.advice}; or set data.packing_isolation=auto to train it unpacked (exact, slower)")


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


class _seeded:
    """Seed torch's CPU generator for a block and restore its state after (the run's seed is untouched)."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self.state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        torch.random.set_rng_state(self.state)
        return False


def for_run(name_or_path: str, packing_isolation: str, runtime) -> Isolation | None:
    """Decide, before any data work, how this run keeps packed rows apart; refuse under `require`.

    Returns:
        The Isolation, or None when the model's config cannot be read (load_model says why).

    Raises:
        SftpackError: `data.packing_isolation: require` and the rows would train unpacked; a model
            whose tiny copy cannot be built or run.
    """
    config = model_config(name_or_path)
    if config is None:
        return None
    probe_dtype = "float32" if runtime.attn_implementation in ("sdpa", "eager") else runtime.dtype
    device = "cuda" if runtime.device.startswith("cuda") else "cpu"
    isolation = decide(config, runtime.attn_implementation, probe_dtype, device)
    if not isolation.packed:
        isolation = dataclasses.replace(isolation, advice=install_advice(config, runtime.device))
        if packing_isolation == "require":
            raise refusal(isolation)
    return isolation


def announce(isolation: Isolation | None, cost: dict[str, int] | None) -> None:
    """The one log line saying how rows are kept apart; unpacked, what it costs (training.data.unpacked_cost)."""
    if isolation is None:
        return
    if isolation.packed:
        logger.info("packed rows stay apart: %s (probe on a tiny %s: largest logit difference %.1g)",
                    isolation.reason, isolation.model_type, isolation.max_difference)
        return
    extra = ""
    if cost and cost["tokens"]:
        extra = (f"; {cost['rows']} packed rows become {cost['sequences']} padded rows, "
                 f"{cost['padded_tokens'] / cost['tokens'] - 1:.0%} more tokens computed")
    logger.warning("model type %s with %s attention cannot keep packed rows apart here (%s). Training the same rows "
                   "UNPACKED, one sequence per batch row, padded (exact%s; tokens/s against packed: "
                   "bench/PACKED_EXACT.md). To train packed, %s", isolation.model_type, isolation.attn_implementation,
                   isolation.reason, extra, isolation.advice)


def describe(isolation: Isolation | None) -> dict[str, Any] | None:
    """The record written to sftpack_run.json and sanity.json."""
    return dataclasses.asdict(isolation) if isolation else None

