"""Continuous batching: every running sequence of the runtime decoded in one forward pass per step.

- :mod:`~action_runtime.batching.blocks`: the KV cache's fixed-size blocks (pure bookkeeping);
- :mod:`~action_runtime.batching.sequence`: one request's state in the engine;
- :mod:`~action_runtime.batching.scheduler`: which sequences run in a step, how many tokens each, who is
  preempted (pure policy, vLLM's shape: running first, then waiting, token budget, recompute);
- :mod:`~action_runtime.batching.paged`: the batch-invariant forward of Llama models over a paged cache;
- :mod:`~action_runtime.batching.percall`: any other causal LM, one model call per sequence in a step;
- :mod:`~action_runtime.batching.loop`: the step loop (one thread) that ties them together.
"""
