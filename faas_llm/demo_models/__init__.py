"""Small causal LMs built locally (random weights, locally trained tokenizer) for tests and benchmarks."""

from faas_llm.demo_models.factory import SPECS, make_demo_model

__all__ = ["SPECS", "make_demo_model"]
