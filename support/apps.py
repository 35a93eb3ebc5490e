from django.apps import AppConfig


class SupportConfig(AppConfig):
    """Support staff's views over every app (the admin's user overview)."""

    name = "support"
    verbose_name = "Support"
