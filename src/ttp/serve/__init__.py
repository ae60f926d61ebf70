"""Serving: personalized Best-of-N behind an OpenAI-compatible HTTP API, with a profile store."""
