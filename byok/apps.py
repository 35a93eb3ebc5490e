from django.apps import AppConfig


class ByokConfig(AppConfig):
    name = "byok"
    verbose_name = "BYOK vault"

    def ready(self) -> None:
        from byok import checks  # noqa: F401 - registers the keyring system check
