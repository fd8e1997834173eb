"""The HTTP dispatcher (FastAPI): ``create_app(app)`` serves an App's workflows over HTTP;
``conveyor api MODULE:app`` runs it with uvicorn. See docs/api.md."""

from .app import create_app
from .settings import ApiKey, ApiSettings, hash_token, new_token

__all__ = ["ApiKey", "ApiSettings", "create_app", "hash_token", "new_token"]
