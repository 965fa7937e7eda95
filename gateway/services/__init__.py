"""The gateway's logic, free of HTTP: actions, invocations, the OpenAI face."""
