"""The audit log: every operator action and automatic decision, without contacts or secrets."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from notifier.store.models import AuditEntry


def record(session: Session, actor: str, action: str, subject_type: str | None = None,
           subject_id: Any = None, **details: Any) -> None:
    """Add one audit entry in the caller's transaction (so it commits or rolls back with the action)."""
    session.add(AuditEntry(actor=actor or "unknown", action=action, subject_type=subject_type,
                           subject_id=None if subject_id is None else str(subject_id), details=details))
