import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def test_tiny_model_loads_offline_and_generates(tiny_model_dir: Path) -> None:
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    tok = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True)
    ids = tok("The cache agent keeps", return_tensors="pt")
    out = lm.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 8 or tok.eos_token_id in out[0].tolist()
    assert tok.decode(out[0]).startswith("The cache agent keeps")
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert chat.endswith("<|assistant|>\n")
    assert (tiny_model_dir / "model.safetensors").stat().st_size < 10_000_000


def test_same_seed_same_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    from faas_llm.demo_models import make_demo_model

    again = make_demo_model(tmp_path / "again", size="tiny")
    a, b = load_file(tiny_model_dir / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = make_demo_model(tmp_path / "other", size="tiny", seed=1)
    c = load_file(other / "model.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_opt_dir", "tiny_model_dir_fp16"])
def test_other_architectures_and_dtypes(fixture: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(fixture)
    meta = json.loads((path / "faas_llm_demo.json").read_text())
    lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    assert lm.dtype == getattr(torch, meta["dtype"])
    with torch.inference_mode():
        logits = lm(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, lm.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_bench_spec_is_about_1_3b_parameters() -> None:
    from faas_llm.demo_models.factory import SPECS

    s = SPECS["bench"]
    head_dim = s.hidden // s.heads
    per_layer = (2 * s.hidden * s.hidden + 2 * s.hidden * s.kv_heads * head_dim + 3 * s.hidden * s.intermediate
                 + 2 * s.hidden)
    total = s.layers * per_layer + 2 * s.vocab * s.hidden + s.hidden
    assert 1.2e9 < total < 1.4e9


def test_cli_make_demo(tmp_path: Path) -> None:
    out = tmp_path / "cli-model"
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "model", "make-demo", "--size", "tiny", str(out)],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote tiny llama model" in proc.stdout
    assert (out / "model.safetensors").exists()
    bad = subprocess.run(
        [sys.executable, "-m", "cli", "model", "make-demo", "--size", "huge", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2 and "huge" in bad.stderr
