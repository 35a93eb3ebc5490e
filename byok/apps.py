from django.apps import AppConfig


class ByokConfig(AppConfig):
    name = "byok"
    verbose_name = "BYOK vault"

    def ready(self) -> None:
        from byok import checks  # registers the keyring system check on import
        from byok.encrypted_fields import register_encrypted_field
        from core.health import readiness_check_register

        readiness_check_register("keyring", checks.keyring_ready)

        register_encrypted_field(
            "byok.ProviderKey",
            "ciphertext",
            purpose=lambda row: row.purpose,
            key_id_field="encryption_key_id",
        )
