"""The gateway: the OpenWhisk REST API and an OpenAI-compatible API over a Redis queue."""
