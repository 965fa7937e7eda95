"""A cache-agent client in its own process (settings from the environment).

``python -m tests.cache_agent.client_proc MODEL [--start-at EPOCH] [--hold] [--forward]``: acquire
MODEL, map it, print one JSON line (lease, tier, a digest of every tensor; with ``--forward`` the
logits of a fixed prompt from the model built on the shared segment), then with ``--hold`` keep the lease (heartbeating)
until stdin closes or the process is killed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import xxhash

from faas_llm.cache_client import CacheClient
from faas_llm.settings import get_settings


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = xxhash.xxh3_64()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--hold", action="store_true")
    parser.add_argument("--forward", action="store_true", help="also build the model and run a forward pass")
    args = parser.parse_args()
    client = CacheClient(get_settings())
    delay = args.start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    lease = client.acquire(args.model)
    tensors = lease.tensors()
    logits: list[float] = []
    if args.forward:
        with torch.inference_mode():
            logits = lease.model()(torch.tensor([[1, 5, 9, 2]])).logits[0, -1, :8].tolist()
    print(json.dumps({"lease": lease.lease_id, "tier": lease.tier.value, "offset": lease.reply.offset,
                      "segment": lease.reply.segment, "digest": digest(tensors), "logits": logits}), flush=True)
    if args.hold:
        sys.stdin.read()
    lease.release()
    client.close()


if __name__ == "__main__":
    main()
