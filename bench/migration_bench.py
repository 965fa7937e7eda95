"""Live migration (issue 8): the pause a streaming client sees across the hand-off, against the time
to decode one token, and the total migration time.

    .venv/bin/python -m bench.migration_bench [--model-dir DIR] [--tokens 200] [--repeats 3] [--json PATH]

Two real runtime processes (A and B, gunicorn over HTTP) serve the same model; a real Redis holds
the activation's token stream and the migration state. A streamed greedy run starts on A; once it
has made ``--at`` tokens, :class:`worker.coordinator.Coordinator` migrates it to B (prefill rounds
while A decodes, then the stop) and :func:`invoker.handoff.continue_if_migrated` (the invoker's
dispatch hook) resumes it on B. Figures, from the client's token timestamps:

* pause: time between the last token from A and the first from B;
* decode: median time between two tokens elsewhere in the same stream;
* migration: from the migrate call to the first token from B;
* same output: the migrated tokens equal an unmigrated run's.

Without --model-dir the tiny demo model is built in a temporary directory.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

from bench.common import Row, add_common_args, print_table, write_json
from bench.runtime_bench import Runtime
from faas_llm import slot_lease
from faas_llm.activations import ActivationStore
from faas_llm.keys import Keys
from faas_llm.migration import RunningRun, register_run, unregister_run
from faas_llm.redis_server import RedisServer
from faas_llm.settings import Settings
from faas_llm.types import ContainerInfo, ContainerState, NodeReport, new_activation_id, now_ms
from invoker import runtime_client
from invoker.handoff import continue_if_migrated
from worker.coordinator import Coordinator

PROMPT = "Serverless inference of large language models starts cold when"


def publish_destination(r: Any, keys: Keys, url: str) -> None:
    report = NodeReport(node="B", max_containers=4, containers=[ContainerInfo(
        id="b-1", state=ContainerState.IDLE, namespace="bench", action="gen", model="m", url=url)])
    r.set(keys.node("B"), report.model_dump_json())
    r.zadd(keys.nodes_index(), {"B": report.ts})


def grant_leases(r: Any, keys: Keys, stop: threading.Event) -> None:
    """B's invoker's side of the slot lease the coordinator takes before the hand-off (its container is idle
    here, so every request is granted at once; the real one is invoker.slot_grants.SlotGrants)."""
    last = "$"
    while not stop.is_set():
        for _stream, entries in r.xread({keys.node_starts("B"): last}, block=200) or []:
            for entry_id, fields in entries:
                last = entry_id
                if slot_lease.LEASE_FIELD in fields:
                    lease_id = json.loads(fields[slot_lease.LEASE_FIELD])["id"]
                    r.rpush(keys.slot_grant(lease_id), slot_lease.GRANTED)


def one_run(settings: Settings, r: Any, keys: Keys, a: Runtime, b: Runtime, tokens: int,
            at: int | None) -> dict[str, Any]:
    """A streamed run on A, migrated to B at ``at`` tokens (``None``: not migrated)."""
    aid = new_activation_id()
    store = ActivationStore(r, keys)
    stamps: list[tuple[float, int]] = []

    def sink(chunk: dict[str, Any]) -> None:
        for _ in chunk.get("token_ids") or []:
            stamps.append((time.perf_counter(), len(stamps)))
        store.append_tokens(aid, chunk)

    deadline = now_ms() + 600_000
    body = {"value": {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True},
            "activation_id": aid, "namespace": "bench", "action_name": "gen"}
    src = RunningRun(activation_id=aid, node="A", container="a-1", url=a.url, namespace="bench", action="gen",
                     model="m", deadline_ms=deadline)
    register_run(r, keys, src)
    out: dict[str, Any] = {}

    def client() -> None:
        outcome = runtime_client.run(a.url, body, deadline, sink)
        handoff = continue_if_migrated(r, keys, src, body, outcome,
                                       lambda url, bd, s: runtime_client.run(url, bd, deadline, s), sink)
        out["result"] = (handoff.outcome if handoff else outcome).result
        out["info"] = handoff.info if handoff else {}

    thread = threading.Thread(target=client)
    thread.start()
    migrate_s = first_b_s = None
    if at is not None:
        while len(stamps) < at:
            time.sleep(0.0005)
        started = time.perf_counter()
        outcome = Coordinator(settings, r, keys).migrate(aid, "B", wait_s=120)
        assert outcome.phase == "resumed", outcome
        migrate_s = outcome.seconds
        first_b_s = started
    thread.join()
    unregister_run(r, keys, aid, ["A", "B"])
    times = [t for t, _ in stamps]
    gaps = [t2 - t1 for t1, t2 in itertools.pairwise(times)]
    row: dict[str, Any] = {"tokens": out["result"]["token_ids"], "gaps": gaps}
    if at is not None:
        handed = int(out["result"]["usage"]["resumed_tokens"])  # tokens A made before it stopped
        pause = gaps[handed - 1]
        others = gaps[: handed - 1] + gaps[handed:]
        row.update(handed_at=handed, pause_s=pause, decode_s=statistics.median(others),
                   to_first_b_s=times[handed] - (first_b_s or 0.0), migrate_call_s=migrate_s,
                   rounds=out["info"].get("rounds"))
    else:
        row["decode_s"] = statistics.median(gaps)
    return row


def bench_model(label: str, model_dir: Path, work: Path, settings: Settings, r: Any, keys: Keys, tokens: int,
                points: list[int], repeats: int) -> list[Row]:
    a, b = Runtime(work / "a"), Runtime(work / "b")
    try:
        a.wait_up()
        b.wait_up()
        for rt in (a, b):
            rt.post("/init", {"value": {"checkpoint": str(model_dir)}})
        publish_destination(r, keys, b.url)
        stop = threading.Event()
        threading.Thread(target=grant_leases, args=(r, keys, stop), daemon=True).start()
        one_run(settings, r, keys, a, b, 8, None)  # warm both paths
        base = one_run(settings, r, keys, a, b, tokens, None)
        rows: list[Row] = []
        for at in points:
            runs = [one_run(settings, r, keys, a, b, tokens, at) for _ in range(repeats)]
            same = all(run["tokens"] == base["tokens"] for run in runs)
            pause = statistics.median(run["pause_s"] for run in runs)
            decode = statistics.median(run["decode_s"] for run in runs)
            rows.append({
                "case": f"{label}, hand-off at ~{at} tokens", "handed at": statistics.median(
                    run["handed_at"] for run in runs),
                "pause ms": pause * 1000, "decode ms/token": decode * 1000, "pause / decode": pause / decode,
                "migration s": statistics.median(run["to_first_b_s"] for run in runs),
                "rounds": statistics.median(run["rounds"] or 0 for run in runs), "same output": same,
            })
        stop.set()
        return rows
    finally:
        a.stop()
        b.stop()


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--model-dir", type=Path, help="HF model directory (default: the tiny demo model)")
    parser.add_argument("--label", default=None, help="name of the model in the table")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--at", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    server = RedisServer().start()
    try:
        with tempfile.TemporaryDirectory(prefix="migration-bench-") as tmp:
            work = Path(tmp)
            model_dir = args.model_dir
            if model_dir is None:
                from faas_llm.demo_models import make_demo_model

                model_dir = make_demo_model(work / "model", size="tiny")
            settings = Settings(redis_url=server.url, data_dir=work / "data")
            r = redis.Redis.from_url(server.url, decode_responses=True)
            rows = bench_model(args.label or ("tiny" if args.model_dir is None else model_dir.name), model_dir,
                               work, settings, r, Keys(settings.key_prefix), args.tokens, args.at, args.repeats)
    finally:
        server.cleanup()
    print_table(rows, title="Live migration: pause seen by the streaming client vs one decode step")
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
