"""Discrete-event simulator of a faas-llm cluster that drives the real placement policies.

Modules: :mod:`.trace` (Azure LLM traces, bursty variant), :mod:`.workload` (models,
Zipf popularity, time scaling to a load level), :mod:`.costs` (cluster and cost model),
:mod:`.cache` (LRU checkpoint caches), :mod:`.cluster` (nodes and instances), :mod:`.engine`
(the event loop and dispatch), :mod:`.events` (event kinds), :mod:`.policy_view` (what a policy
sees), :mod:`.loads` (loads and caches), :mod:`.moves` (applying migrations and holds),
:mod:`.migration` (planning them with :mod:`faas_llm.migration_policy`), :mod:`.bounds` (the
lower bound), :mod:`.report` (stats, plot).
"""
