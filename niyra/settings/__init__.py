"""Settings, split by environment: `base` (shared), `development`, `test`, `production`.

manage.py defaults to development; the ASGI/WSGI entry points and the Celery app to production.
"""
