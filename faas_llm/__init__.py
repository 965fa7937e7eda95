"""faas-llm: a serverless runtime for large language models (the shared core).

Services (``gateway``, ``invoker``, ``action_runtime``, ``cache_agent``) import this
package and never each other; this package imports no service.
"""

__version__ = "0.1.0"
