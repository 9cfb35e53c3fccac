"""Who holds a lease on an outbox row: a lease owner is host:pid:pid-namespace:token. A dispatcher restarted on
the same machine sees that the killed one is gone and reconciles its rows one provider timeout later, without
waiting for the leases to run out; on other machines (PostgreSQL scale-out) the lease expiry is what tells."""

from __future__ import annotations

import os
import secrets
import socket


def worker_id() -> str:
    """host:pid:pid-namespace:token, recorded as the lease owner (the token tells a reused pid apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_pid_namespace()}:{secrets.token_hex(3)}"


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        return "-"


def owner_is_gone(owner: str, me: str) -> bool:
    """True when a lease owner is a dispatch process of this machine (same host name and pid namespace) that no
    longer runs: its leases need not run out before they are reconciled. Elsewhere we cannot tell: False."""
    parts = owner.split(":")
    if owner == me or len(parts) != 4 or not parts[1].isdigit() or parts[2] == "-":
        return False
    if (parts[0], parts[2]) != (socket.gethostname(), _pid_namespace()):
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return True  # an earlier process that had our pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
