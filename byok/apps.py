from django.apps import AppConfig


class ByokConfig(AppConfig):
    name = "byok"
    verbose_name = "BYOK vault"

    def ready(self) -> None:
        from byok import checks  # noqa: F401 - registers the keyring system check
        from byok.encrypted_fields import register_encrypted_field

        register_encrypted_field(
            "byok.ProviderKey",
            "ciphertext",
            purpose=lambda row: row.purpose,
            key_id_field="encryption_key_id",
        )
