"""A minimal Flask + redis-py dispatcher, written the way the reference architecture shows it.

The baseline that ``bench/api.py`` compares Conveyor's HTTP API with: validate the JSON body,
make a workflow id, one ``XADD`` per request to one stream (auto id, approximate length
bound), answer 202 with the id. No auth, no rate limit, no state hash, no idempotency: only
what the article's dispatcher does.

Routes:

  POST /start                  body ``{"workflow": name, ...input}`` (a JSON object)
  POST /v1/workflows/<name>    body: the workflow input, any JSON value
  GET  /healthz

Settings from the environment: ``REDIS_URL`` (required, so it never falls back to a shared
Redis by accident), ``STREAM`` (default ``workflow:tasks``), ``STREAM_MAXLEN`` (approximate
bound, default 10,000,000 so a benchmark run never trims what it counts).

Run it with Flask's threaded development server or with gunicorn::

  REDIS_URL=redis://127.0.0.1:7000/0 python bench/flask_dispatcher.py --port 8080
  REDIS_URL=redis://127.0.0.1:7000/0 gunicorn -w 2 -b 127.0.0.1:8080 bench.flask_dispatcher:app
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from typing import Any

import redis
from flask import Flask, request


def create_app() -> Flask:
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        raise SystemExit("flask_dispatcher: set REDIS_URL (e.g. redis://127.0.0.1:7000/0)")
    stream = os.environ.get("STREAM", "workflow:tasks")
    maxlen = int(os.environ.get("STREAM_MAXLEN", "10000000"))
    # one client per process; its connection pool is thread safe (threaded server) and
    # re-created after a fork (gunicorn workers)
    r = redis.Redis.from_url(redis_url)

    app = Flask("flask_dispatcher")

    def enqueue(workflow: str, payload: Any) -> tuple[dict[str, str], int]:
        workflow_id = str(uuid.uuid4())
        r.xadd(
            stream,
            {"workflow_id": workflow_id, "workflow": workflow, "input": json.dumps(payload)},
            maxlen=maxlen,
            approximate=True,
        )
        return {"id": workflow_id, "workflow_id": workflow_id}, 202

    @app.post("/start")
    def start() -> tuple[dict[str, str], int]:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("workflow"), str):
            return {"error": 'expected a JSON object with a "workflow" name'}, 400
        workflow = body.pop("workflow")
        return enqueue(workflow, body)

    @app.post("/v1/workflows/<name>")
    def start_named(name: str) -> tuple[dict[str, str], int]:
        if not request.is_json:
            return {"error": "expected Content-Type: application/json"}, 415
        try:
            payload = json.loads(request.get_data())
        except ValueError:
            return {"error": "malformed JSON"}, 400
        return enqueue(name, payload)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Flask's threaded development server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    create_app().run(host=args.host, port=args.port, threaded=True)


_app: Flask | None = None


def __getattr__(name: str) -> Flask:
    """``gunicorn bench.flask_dispatcher:app`` builds the app on first access (no import-time
    side effect, so importing this module without REDIS_URL works)."""
    global _app
    if name != "app":
        raise AttributeError(name)
    if _app is None:
        _app = create_app()
    return _app


if __name__ == "__main__":
    main()
