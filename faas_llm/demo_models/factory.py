"""Build small causal LMs locally: a config, random weights from a fixed seed, a tokenizer
trained here on a bundled text. Nothing is downloaded.

The result is an ordinary Hugging Face model directory (``config.json``,
``model.safetensors``, tokenizer files, ``generation_config.json``) that
``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load
offline. Sizes:

- ``tiny``:  a few MB, for tests (Llama-style, or GPT-2 / OPT with ``arch=``);
- ``bench``: about 1.3 B parameters in fp16 (about 2.6 GB), for benchmarks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

Size = Literal["tiny", "small", "bench"]
Arch = Literal["llama", "gpt2", "opt"]

SPECIAL_TOKENS = {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>"}
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class DemoSpec:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    context: int
    dtype: str


SPECS: dict[str, DemoSpec] = {
    "tiny": DemoSpec(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=172, vocab=1024, context=512,
                     dtype="float32"),
    # ~10 M parameters, 2k context: a greedy token takes ~4 ms on one CPU thread (the tiny one ~0.35 ms), so
    # a run of a few hundred tokens lasts long enough for a live migration to catch it (tests/celery)
    "small": DemoSpec(hidden=256, layers=12, heads=8, kv_heads=4, intermediate=688, vocab=1024, context=2048,
                      dtype="float32"),
    # ~1.30 B parameters: 26 x 45.1 M per layer + 2 x 65.5 M embeddings; fp16 -> ~2.6 GB.
    "bench": DemoSpec(hidden=2048, layers=26, heads=16, kv_heads=4, intermediate=5632, vocab=32000,
                      context=2048, dtype="float16"),
}


def corpus_text() -> str:
    return resources.files("faas_llm.demo_models").joinpath("corpus.txt").read_text(encoding="utf-8")


def train_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on the bundled corpus, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[SPECIAL_TOKENS["pad"], SPECIAL_TOKENS["bos"], SPECIAL_TOKENS["eos"], SPECIAL_TOKENS["unk"],
                        "<|system|>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = corpus_text()
    tok.train_from_iterator([line for line in text.splitlines() if line.strip()], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        pad_token=SPECIAL_TOKENS["pad"],
        unk_token=SPECIAL_TOKENS["unk"],
        model_max_length=SPECS["tiny"].context,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(spec: DemoSpec, arch: Arch, tokenizer: Any) -> Any:
    import torch
    from transformers import GPT2Config, LlamaConfig, OPTConfig

    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    dtype = getattr(torch, spec.dtype)
    if arch == "llama":
        return LlamaConfig(
            vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
            num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
            max_position_embeddings=spec.context, tie_word_embeddings=False,
            dtype=dtype, **ids,
        )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=spec.vocab, n_embd=spec.hidden, n_layer=spec.layers, n_head=spec.heads,
            n_positions=spec.context, tie_word_embeddings=True, dtype=dtype, **ids,
        )
    if arch == "opt":
        return OPTConfig(
            vocab_size=spec.vocab, hidden_size=spec.hidden, ffn_dim=spec.intermediate,
            num_hidden_layers=spec.layers, num_attention_heads=spec.heads, word_embed_proj_dim=spec.hidden,
            max_position_embeddings=spec.context, tie_word_embeddings=True, dtype=dtype, **ids,
        )
    raise ValueError(f"unknown architecture {arch!r}; choose llama, gpt2 or opt")


def make_demo_model(
    out_dir: str | Path,
    size: Size = "tiny",
    arch: Arch = "llama",
    seed: int = 0,
    dtype: str | None = None,
) -> Path:
    """Write a demo model directory to ``out_dir`` and return its path.

    The same ``size``, ``arch``, ``seed`` and ``dtype`` always give the same weights.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    if size not in SPECS:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SPECS)}")
    if size == "bench" and arch != "llama":
        raise ValueError("the bench size is Llama-style only")
    spec = SPECS[size]
    if dtype is not None:
        spec = DemoSpec(**{**spec.__dict__, "dtype": dtype})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = train_tokenizer(min(spec.vocab, SPECS["tiny"].vocab))
    tokenizer.model_max_length = spec.context
    config = build_config(spec, arch, tokenizer)

    torch_dtype = getattr(torch, spec.dtype)
    previous = torch.get_default_dtype()
    torch.manual_seed(seed)
    torch.set_default_dtype(torch_dtype)
    try:
        model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True, max_shard_size="50GB")
    tokenizer.save_pretrained(out)
    (out / "faas_llm_demo.json").write_text(
        json.dumps({"size": size, "arch": arch, "seed": seed, "dtype": spec.dtype,
                    "parameters": sum(p.numel() for p in model.parameters())}, indent=2) + "\n"
    )
    return out
