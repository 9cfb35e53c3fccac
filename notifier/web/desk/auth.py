"""Who may use the desk: agents with an argon2-hashed password, locked out after repeated failures.

An agent's session names the agent and a token that changes at every sign-in and sign-out, so a cookie from
before a sign-in (fixation) or after a sign-out no longer opens the desk. A failed sign-in counts against the
agent named; after `desk_lockout_attempts` of them in a row that agent is locked for `desk_lockout_minutes`
(another agent is not affected). Passwords and contacts never reach the log or the audit trail.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask_login import UserMixin
from sqlalchemy import select
from sqlalchemy.orm import Session

from notifier.errors import NotifierError, UsageError
from notifier.store import audit
from notifier.store.models import Agent
from notifier.store.settings import Settings

ROLES = ("agent", "duty", "supervisor")
# Duty officers and supervisors may approve and send broadcasts from the desk (four eyes, as on the CLI).
APPROVERS = ("duty", "supervisor")
MIN_PASSWORD = 10
_HASHER = PasswordHasher()
# Checked when the name is unknown, so that a wrong name takes as long as a wrong password.
_DUMMY_HASH = _HASHER.hash("not a password of anyone")


class SignInRefused(NotifierError):
    """A sign-in that does not open the desk; `reason` is "wrong" or "locked"."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"sign-in refused: {reason}")
        self.reason = reason


@dataclass
class DeskAgent(UserMixin):
    """The signed-in agent as Flask-Login holds it: the id carries the agent's current session token."""

    agent_id: int
    name: str
    role: str
    token: str

    def get_id(self) -> str:
        """"<agent id>:<session token>": a cookie naming an older token no longer loads the agent."""
        return f"{self.agent_id}:{self.token}"

    @property
    def approves(self) -> bool:
        """Whether this agent may approve and send broadcasts."""
        return self.role in APPROVERS


# --- managing agents (`notifier agents`) -------------------------------------------------------------------------

def add_agent(session: Session, name: str, role: str, password: str, actor: str) -> Agent:
    """Create an agent with an argon2 hash of the password."""
    name = (name or "").strip()
    if not name or len(name) > 120:
        raise UsageError("give the agent a name (1 to 120 characters)")
    if role not in ROLES:
        raise UsageError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    if len(password or "") < MIN_PASSWORD:
        raise UsageError(f"the password must be at least {MIN_PASSWORD} characters")
    if session.scalar(select(Agent.id).where(Agent.name == name)) is not None:
        raise UsageError(f"there is already an agent called {name}")
    agent = Agent(name=name, role=role, password_hash=_HASHER.hash(password))
    session.add(agent)
    session.flush()
    audit.record(session, actor, "agent.added", "agent", agent.id, name=name, role=role)
    return agent


def disable_agent(session: Session, name: str, actor: str) -> Agent:
    """Stop an agent from signing in; their open session ends at its next request."""
    agent = session.scalar(select(Agent).where(Agent.name == name))
    if agent is None:
        raise UsageError(f"unknown agent {name!r} (see `notifier agents list`)")
    agent.disabled, agent.session_token = True, None
    audit.record(session, actor, "agent.disabled", "agent", agent.id, name=name)
    return agent


def agents(session: Session) -> list[Agent]:
    """Every agent, by name."""
    return list(session.scalars(select(Agent).order_by(Agent.name)))


# --- signing in ------------------------------------------------------------------------------------------------

def sign_in(session: Session, settings: Settings, name: str, password: str, now: datetime) -> DeskAgent:
    """Check a name and password (in the caller's transaction) and start a new session token; SignInRefused
    when wrong, locked or disabled. Failures are counted and audited even though the sign-in is refused."""
    agent = session.scalar(select(Agent).where(Agent.name == (name or "").strip()[:120]))
    if agent is None or agent.disabled:
        _verify(_DUMMY_HASH, password)
        raise SignInRefused("wrong")
    if agent.locked_until is not None and agent.locked_until > now:
        audit.record(session, agent.name, "desk.signin_locked", "agent", agent.id)
        raise SignInRefused("locked")
    if not _verify(agent.password_hash, password):
        _count_failure(session, settings, agent, now)
        raise SignInRefused("locked" if agent.locked_until and agent.locked_until > now else "wrong")
    agent.failed_signins, agent.locked_until = 0, None
    agent.session_token = secrets.token_hex(16)
    audit.record(session, agent.name, "desk.signed_in", "agent", agent.id)
    return DeskAgent(agent.id, agent.name, agent.role, agent.session_token)


def proxy_sign_in(session: Session, name: str) -> DeskAgent | None:
    """The agent a trusted reverse proxy names (it did the authentication), keeping their session token if they
    have one; None for an unknown or disabled name."""
    agent = session.scalar(select(Agent).where(Agent.name == (name or "").strip()[:120]))
    if agent is None or agent.disabled:
        return None
    if not agent.session_token:
        agent.session_token = secrets.token_hex(16)
        audit.record(session, agent.name, "desk.signed_in", "agent", agent.id, via="proxy")
    return DeskAgent(agent.id, agent.name, agent.role, agent.session_token)


def sign_out(session: Session, agent_id: int) -> None:
    """End the agent's session everywhere: the token its cookie carries is dropped."""
    agent = session.get(Agent, agent_id)
    if agent is not None:
        agent.session_token = None
        audit.record(session, agent.name, "desk.signed_out", "agent", agent.id)


def load_agent(session: Session, user_id: str) -> DeskAgent | None:
    """The agent a session cookie names, if its token is still the current one."""
    agent_id, _, token = (user_id or "").partition(":")
    if not agent_id.isdigit() or not token:
        return None
    agent = session.get(Agent, int(agent_id))
    if agent is None or agent.disabled or not agent.session_token or \
            not secrets.compare_digest(agent.session_token, token):
        return None
    return DeskAgent(agent.id, agent.name, agent.role, agent.session_token)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password or "")
    except (VerificationError, InvalidHashError):
        return False


def _count_failure(session: Session, settings: Settings, agent: Agent, now: datetime) -> None:
    agent.failed_signins += 1
    audit.record(session, agent.name, "desk.signin_failed", "agent", agent.id, failures=agent.failed_signins)
    if agent.failed_signins >= settings.desk_lockout_attempts:
        agent.failed_signins = 0
        agent.locked_until = now + timedelta(minutes=settings.desk_lockout_minutes)
        audit.record(session, agent.name, "desk.locked_out", "agent", agent.id,
                     minutes=settings.desk_lockout_minutes)
