from django.apps import AppConfig

from core.encrypted_fields import register_encrypted_field


class ByokConfig(AppConfig):
    name = "byok"
    verbose_name = "BYOK vault"

    def ready(self) -> None:
        # Every column sealed with the keyring, for reencrypt_secrets.
        register_encrypted_field(
            "byok.ProviderKey",
            "ciphertext",
            purpose=lambda row: row.purpose,
            key_id_field="encryption_key_id",
        )
