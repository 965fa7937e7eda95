"""Discrete-event simulator of a faas-llm cluster that drives the real placement policies.

Modules: :mod:`.trace` (Azure LLM traces, bursty variant), :mod:`.workload` (models,
Zipf popularity, time scaling to a load level), :mod:`.costs` (cluster and cost model),
:mod:`.cache` (LRU checkpoint caches), :mod:`.engine` (the event loop),
:mod:`.migration` (applying :mod:`faas_llm.migration_policy`), :mod:`.report` (stats, plot).
"""
