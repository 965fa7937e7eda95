"""The action runtime: the process inside each container, serving one model by OpenWhisk's action protocol.
One HTTP server (server.py, the table in routes.py; bodies: faas_llm.runtime_protocol): /init, /run, /export, /prefill.
It touches its model (through the cache agent, the registry or a path), its __OW_* env, stdout/stderr; no Redis."""
