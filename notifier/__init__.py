"""notifier: tell every passenger and shipper on a disrupted sailing what happened and what they may choose."""

__version__ = "0.1.0"


class NotifierError(Exception):
    """An error a user can cause and fix; the CLI prints it as one line and exits non-zero."""

    exit_code = 1


class UsageError(NotifierError):
    """Bad arguments or unknown names (sailing, port, broadcast ...)."""

    exit_code = 2
