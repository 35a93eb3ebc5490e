from django.apps import AppConfig


class DashboardConfig(AppConfig):
    """The dashboard's home page, which reads every app; the other pages live in their apps."""

    name = "dashboard"
    verbose_name = "Dashboard"
