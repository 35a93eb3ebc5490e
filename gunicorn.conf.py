"""gunicorn settings for the `web` process: ASGI through uvicorn workers."""

import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
worker_class = "uvicorn_worker.UvicornWorker"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Streaming LLM calls can run for minutes; the provider timeout bounds them, not gunicorn.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "300"))
graceful_timeout = 30
keepalive = 5
accesslog = None  # request logs come from Fly's proxy; ours must never print headers
errorlog = "-"
