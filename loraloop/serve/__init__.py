"""Production: the OpenAI-compatible server, its logs, monitoring, status and terminal chat."""
