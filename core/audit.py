"""How code in the base package writes an audit row, although core imports no app.

The app that owns audit events (accounts) registers its writer here from its `AppConfig.ready()`;
core's own commands (`reencrypt_secrets`) call `audit_record`. Like any audit write, the caller
runs it inside the transaction whose change it describes.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class AuditWriter(Protocol):
    def __call__(
        self, *, actor: Any, subject: Any, event: str, target: str, outcome: str, details: dict[str, Any] | None
    ) -> object: ...


_writer: AuditWriter | None = None


def audit_writer_register(writer: AuditWriter) -> None:
    global _writer
    _writer = writer


def audit_record(*, event: str, target: str, outcome: str, details: dict[str, Any]) -> None:
    """A system event (no acting user, no subject). Without a registered writer — an install
    without the accounts app — it is only logged."""
    logger.info("%s target=%s outcome=%s", event, target, outcome)
    if _writer is None:
        logger.warning("%s: no audit writer is registered; the event was only logged", event)
        return
    _writer(actor=None, subject=None, event=event, target=target, outcome=outcome, details=details)
