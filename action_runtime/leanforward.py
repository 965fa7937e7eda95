"""A lean forward for small Llama models: the same torch operations as ``transformers``' forward, in
the same order and on the same shapes and memory layouts, without its Python around them.

For the tiny demo model a one-token run spent ~2/3 of the runtime's CPU in ``transformers``' forward,
most of it Python (module ``__call__`` hooks, config ``__getattribute__``, mask creation, the
``DynamicCache``, output dataclasses) around kernels of microseconds. This module replays the
forward of ``LlamaForCausalLM`` (``sdpa`` attention, default RoPE, SiLU MLP) as plain calls over the
model's own parameters (no copy), with its own KV cache (:class:`LeanCache`: per layer the keys and
values ``torch.cat`` along the sequence, as ``DynamicCache`` does).

Bit-identical or not used: :func:`lean_forward_for` returns ``None`` for any other architecture or
configuration, and otherwise checks the lean forward against the model's own forward on a probe
sequence (a prefill, single-token steps, a multi-token extension of a cache: every path the engine
takes) and keeps it only when every logit is equal (``torch.equal``). Tests compare whole runs
(greedy and sampled, fp32 and fp16, prefill sessions of a migration) against the plain path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


#: rotary tables remembered at most (then forgotten all at once): every single position of a
#: 4k context, or prompts of a few thousand different lengths
_ROTARY_MEMO = 8192


@dataclass
class LeanCache:
    """Per layer the keys and values so far, ``(1, kv_heads, length, head_dim)``, contiguous."""

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[-2]) if self.keys else 0


@dataclass(frozen=True)
class _Layer:
    input_norm: torch.Tensor
    input_eps: float
    q: tuple[torch.Tensor, torch.Tensor | None]
    k: tuple[torch.Tensor, torch.Tensor | None]
    v: tuple[torch.Tensor, torch.Tensor | None]
    o: tuple[torch.Tensor, torch.Tensor | None]
    post_norm: torch.Tensor
    post_eps: float
    gate: tuple[torch.Tensor, torch.Tensor | None]
    up: tuple[torch.Tensor, torch.Tensor | None]
    down: tuple[torch.Tensor, torch.Tensor | None]


def _rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``LlamaRMSNorm.forward``."""
    input_dtype = hidden.dtype
    if input_dtype is not torch.float32:  # (``.to`` of a float32 tensor to float32 is the tensor itself)
        hidden = hidden.to(torch.float32)
    variance = hidden.pow(2).mean(-1, keepdim=True)
    hidden = hidden * torch.rsqrt(variance + eps)
    if input_dtype is not torch.float32:
        hidden = hidden.to(input_dtype)
    return weight * hidden


def _linear(x: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
    return F.linear(x, wb[0], wb[1])


class LeanLlama:
    """The forward of a ``LlamaForCausalLM`` as plain torch calls; see the module docstring."""

    def __init__(self, model: Any) -> None:
        from transformers.integrations import sdpa_attention
        from transformers.masking_utils import sdpa_mask

        self._sdpa_mask = sdpa_mask
        self._use_gqa_in_sdpa = sdpa_attention.use_gqa_in_sdpa
        self._repeat_kv = sdpa_attention.repeat_kv
        inner = model.model
        config = model.config
        self.embed = inner.embed_tokens.weight
        self.padding_idx = inner.embed_tokens.padding_idx
        self.norm = inner.norm.weight
        self.norm_eps = float(inner.norm.variance_epsilon)
        self.lm_head = (model.lm_head.weight, model.lm_head.bias)
        rotary = inner.rotary_emb
        self.inv_freq = rotary.inv_freq
        self.attention_scaling = rotary.attention_scaling
        first = inner.layers[0].self_attn
        self.head_dim = int(first.head_dim)
        self.groups = int(first.num_key_value_groups)
        self.scaling = float(first.scaling)
        self.layers_used = int(config.num_hidden_layers)
        #: (cached length, new tokens) -> the rotary cos and sin of those positions
        self._rotary: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

        def wb(linear: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
            return linear.weight, linear.bias

        self.layers = [
            _Layer(
                input_norm=layer.input_layernorm.weight, input_eps=float(layer.input_layernorm.variance_epsilon),
                q=wb(layer.self_attn.q_proj), k=wb(layer.self_attn.k_proj), v=wb(layer.self_attn.v_proj),
                o=wb(layer.self_attn.o_proj),
                post_norm=layer.post_attention_layernorm.weight,
                post_eps=float(layer.post_attention_layernorm.variance_epsilon),
                gate=wb(layer.mlp.gate_proj), up=wb(layer.mlp.up_proj), down=wb(layer.mlp.down_proj),
            )
            for layer in list(inner.layers)[: self.layers_used]
        ]

    def _rotary_for(self, past: int, q_len: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
        """``LlamaRotaryEmbedding.forward`` (default RoPE) for positions ``past .. past + q_len - 1``,
        unsqueezed for the heads; remembered (a pure function of its inputs, computed on the same shapes:
        the same bits as computing it again)."""
        position_ids = (torch.arange(q_len, device=device) + past).unsqueeze(0)
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.attention_scaling).to(dtype=dtype).unsqueeze(1)
        sin = (emb.sin() * self.attention_scaling).to(dtype=dtype).unsqueeze(1)
        # transformers rotates with ``rotate_half(x) * sin`` = ``cat(-x2, x1) * sin``; here ``roll(x) * signed_sin``
        # = ``cat(x2, x1) * cat(-sin1, sin2)``: the same products, bit for bit ((-a) * b and a * (-b) are one IEEE
        # value: negation is exact), in the same memory layout (tested), with one op instead of four
        half = sin.shape[-1] // 2
        signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        if len(self._rotary) >= _ROTARY_MEMO:
            self._rotary.clear()
        self._rotary[(past, q_len)] = (cos, signed_sin)
        return cos, signed_sin

    def new_cache(self) -> LeanCache:
        return LeanCache()

    def forward(self, ids: list[int], cache: LeanCache) -> torch.Tensor:
        """The last position's logits after ``ids`` (appended to ``cache``); call under inference mode."""
        device = self.embed.device
        input_ids = torch.tensor([ids], device=device)
        hidden = F.embedding(input_ids, self.embed, self.padding_idx)
        q_len = len(ids)
        past = cache.length
        kv_len = past + q_len
        rotary = self._rotary.get((past, q_len))
        if rotary is None:
            rotary = self._rotary_for(past, q_len, hidden.dtype, device)
        cos, signed_sin = rotary
        half = self.head_dim // 2
        # create_causal_mask for sdpa: no mask when q_len == 1 or nothing is cached; else a boolean one
        mask = None
        if q_len > 1 and past > 0:
            mask = self._sdpa_mask(batch_size=1, q_length=q_len, kv_length=kv_len, q_offset=past, kv_offset=0,
                                   device=device)
        hidden_shape = (1, q_len, -1, self.head_dim)
        first_call = not cache.keys
        for index, layer in enumerate(self.layers):
            residual = hidden
            x = _rms_norm(hidden, layer.input_norm, layer.input_eps)
            query = _linear(x, layer.q).view(hidden_shape).transpose(1, 2)
            key = _linear(x, layer.k).view(hidden_shape).transpose(1, 2)
            value = _linear(x, layer.v).view(hidden_shape).transpose(1, 2)
            query = (query * cos) + (query.roll(half, dims=-1) * signed_sin)
            key = (key * cos) + (key.roll(half, dims=-1) * signed_sin)
            # DynamicLayer.update: cat onto what is cached (the first time onto an empty tensor)
            if first_call:
                key, value = key.contiguous(), value.contiguous()
                cache.keys.append(key)
                cache.values.append(value)
            else:
                key = torch.cat([cache.keys[index], key], dim=-2)
                value = torch.cat([cache.values[index], value], dim=-2)
                cache.keys[index], cache.values[index] = key, value
            attn = self._attention(query, key, value, mask, q_len)
            attn = attn.reshape(1, q_len, -1)  # (a view: ``attn`` is contiguous)
            hidden = residual + _linear(attn, layer.o)
            residual = hidden
            x = _rms_norm(hidden, layer.post_norm, layer.post_eps)
            hidden = residual + _linear(F.silu(_linear(x, layer.gate)) * _linear(x, layer.up), layer.down)
        hidden = _rms_norm(hidden, self.norm, self.norm_eps)
        logits = _linear(hidden[:, -1:, :], self.lm_head)
        return logits[0, -1]

    def _attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                   q_len: int) -> torch.Tensor:
        """``sdpa_attention_forward`` for the cases above (no dropout, no position bias)."""
        kwargs: dict[str, Any] = {}
        if self.groups > 1:
            if self._use_gqa_in_sdpa(mask, key, value):
                kwargs["enable_gqa"] = True
            elif q_len == 1:
                query = query.reshape(1, query.shape[1] // self.groups, self.groups, query.shape[-1])
            else:
                key = self._repeat_kv(key, self.groups)
                value = self._repeat_kv(value, self.groups)
        is_causal = q_len > 1 and mask is None
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, scale=self.scaling,
                                             is_causal=is_causal, **kwargs)
        if out.shape[2] != q_len:  # undo the packing above (else the reshape would be the same view)
            out = out.reshape(out.shape[0], -1, q_len, value.shape[-1])
        return out.transpose(1, 2).contiguous()


def _supported(model: Any) -> str | None:
    """Why the lean forward cannot serve ``model`` (``None``: it may, pending the probe)."""
    try:
        from transformers.models.llama.modeling_llama import LlamaForCausalLM, LlamaRMSNorm
    except ImportError:  # pragma: no cover - transformers without Llama
        return "no Llama in this transformers"
    if type(model) is not LlamaForCausalLM:
        return f"architecture {type(model).__name__}"
    config = model.config
    if model.training:
        return "training mode"
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return f"attention {getattr(config, '_attn_implementation', None)!r}"
    if (config.rope_parameters or {}).get("rope_type", "default") != "default":
        return "RoPE scaling"
    if config.hidden_act != "silu":
        return f"activation {config.hidden_act!r}"
    if not getattr(config, "is_causal", True):
        return "bidirectional attention"
    if torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks:
        return "global module hooks"
    devices = {p.device for p in model.parameters()}
    if len(devices) != 1:
        return "parameters on several devices"
    for module in model.modules():
        if module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_hf_hook"):
            return "module hooks (offloading, quantisation or adapters)"
        if "forward" in vars(module):
            return "a replaced forward"
        if isinstance(module, torch.nn.Linear) and type(module) is not torch.nn.Linear:
            return f"linear layer {type(module).__name__}"
        if isinstance(module, LlamaRMSNorm) and type(module) is not LlamaRMSNorm:
            return f"norm {type(module).__name__}"
    return None


def _probe_ids(vocab: int) -> list[int]:
    return [(7 * i + 3) % vocab for i in range(11)]


def matches_model(lean: LeanLlama, model: Any, cache_factory: Any, cache_arg: str) -> bool:
    """The probe: a 5-token prefill, two single-token steps, a 4-token extension; every logit equal."""
    ids = _probe_ids(int(lean.embed.shape[0]))
    steps = [ids[:5], ids[5:6], ids[6:7], ids[7:11]]
    lean_cache = lean.new_cache()
    hf_cache = cache_factory()
    with torch.inference_mode():
        for chunk in steps:
            mine = lean.forward(chunk, lean_cache)
            kwargs = {cache_arg: hf_cache, "use_cache": True, "logits_to_keep": 1}
            theirs = model(input_ids=torch.tensor([chunk], device=lean.embed.device), **kwargs).logits[0, -1]
            if mine.dtype != theirs.dtype or not torch.equal(mine, theirs):
                return False
    return True


def lean_forward_for(model: Any, cache_factory: Any, cache_arg: str) -> LeanLlama | None:
    """The lean forward of ``model`` when it is a supported Llama and the probe matches bit for bit."""
    reason = _supported(model)
    if reason is None:
        try:
            lean = LeanLlama(model)
            if matches_model(lean, model, cache_factory, cache_arg):
                return lean
            reason = "the probe's logits differ from the model's forward"
        except Exception as exc:  # any surprise: the plain forward serves
            reason = f"{type(exc).__name__}: {exc}"
    log.info("plain transformers forward (no lean forward: %s)", reason)
    return None
