from django.apps import AppConfig

from core.encrypted_fields import register_encrypted_field


class ConnectionsConfig(AppConfig):
    name = "connections"
    verbose_name = "OAuth connections"

    def ready(self) -> None:
        # Every column sealed with the keyring, for reencrypt_secrets. Both tokens share one key
        # id column; the PKCE verifier of a connect flow in progress is short-lived, but a secret
        # all the same.
        register_encrypted_field(
            "connections.OAuthConnection",
            "access_token_ciphertext",
            purpose=lambda row: row.access_token_purpose,
            key_id_field="encryption_key_id",
        )
        register_encrypted_field(
            "connections.OAuthConnection",
            "refresh_token_ciphertext",
            purpose=lambda row: row.refresh_token_purpose,
            key_id_field="encryption_key_id",
        )
        register_encrypted_field(
            "connections.OAuthAuthorizationRequest",
            "code_verifier_ciphertext",
            purpose=lambda row: row.code_verifier_purpose,
            key_id_field="encryption_key_id",
        )
