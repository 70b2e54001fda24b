"""`ugen serve`: the HTTP API with request batching (`app`), its batcher and tasks, and the web page."""

from ugen.serve.app import create_app

__all__ = ["create_app"]
