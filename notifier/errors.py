"""The error tree: every error a user can cause derives from NotifierError and carries its exit code;
the CLI prints it as one line. Feed, rule, template and store errors subclass it where they arise."""


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
