"""notifier: tell every passenger and shipper on a disrupted sailing what happened and what they may choose."""

__version__ = "0.1.0"


def escape_unprintable(text: str) -> str:
    """The text with every unprintable character (line break, terminal escape, bidi override ...) spelt as its
    escape: a message quoting a feed's or a rule file's values stays one honest line in the log and the CLI."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class NotifierError(Exception):
    """An error a user can cause and fix; the CLI prints it as one line and exits non-zero."""

    exit_code = 1


class UsageError(NotifierError):
    """Bad arguments or unknown names (sailing, port, broadcast ...)."""

    exit_code = 2
