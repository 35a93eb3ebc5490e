from django.apps import AppConfig


class CoreConfig(AppConfig):
    """The base every app builds on (errors, API fields, pages, health, middleware); no models."""

    name = "core"
    verbose_name = "Core"
