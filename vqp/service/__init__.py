"""HTTP service: FastAPI app (app.py), micro-batched detection (batcher.py), persistent video jobs (jobs.py)."""
from .app import create_app
from .settings import Settings

__all__ = ["create_app", "Settings"]
