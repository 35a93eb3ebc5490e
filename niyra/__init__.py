"""Niyra project package: wiring only (settings, urls, Celery, errors, auth, health)."""

from niyra.celery import app as celery_app

__all__ = ["celery_app"]
