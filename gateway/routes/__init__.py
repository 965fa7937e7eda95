"""Blueprints: thin routes that parse a request, call a service and frame its answer."""
