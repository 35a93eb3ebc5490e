from django.apps import AppConfig
from django.core.checks import register
from django.core.signals import got_request_exception

from core import checks
from core.dbpool import check_pools_after_request_exception
from core.health import readiness_check_register


class CoreConfig(AppConfig):
    """The base every app builds on (errors, API fields, pages, health, middleware, the keyring);
    no models."""

    name = "core"
    verbose_name = "Core"

    def ready(self) -> None:
        # Every app's encrypted columns go through the one keyring: start-up refuses a missing or
        # unusable one, and /readyz reports it.
        register(checks.check_keyring)
        readiness_check_register("keyring", checks.keyring_ready)
        got_request_exception.connect(check_pools_after_request_exception, dispatch_uid="core.dbpool")
