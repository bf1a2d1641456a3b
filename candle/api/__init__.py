"""OpenAI-compatible request schemas, response builders and errors."""
