from django.apps import AppConfig

from core.audit import audit_writer_register


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Users, API tokens and audit"

    def ready(self) -> None:
        from accounts.services import audit_event_record  # noqa: PLC0415 - models load after apps.py

        # core's commands (e.g. reencrypt_secrets) write their audit rows through this.
        audit_writer_register(audit_event_record)
