"""Logging that never writes a full phone number or email address (DESIGN.md §4 "Logs").

Our own modules log masked contacts only (notifier.privacy). As a second line of defence, `RedactContacts`
masks every E.164 number and email address left in a record's message, traceback and stack, whoever logged it:
the CLI installs it on every handler of the root logger (`setup_logging`), and on the loggers of the libraries
that print request lines or SQL parameters (`guard_library_loggers`), so that their records are clean for any
handler, including one an embedding application adds later.
"""

from __future__ import annotations

import logging
import sys

from notifier.privacy import redact

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries that log request URLs (a Twilio look-up carries To=<number>), request data or SQL parameters.
LIBRARY_LOGGERS = ("urllib3.connectionpool", "twilio.http_client", "sqlalchemy.engine.Engine", "werkzeug",
                   "apscheduler")


class RedactContacts(logging.Filter):
    """Masks phone numbers and email addresses in a log record's message, traceback and stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed call: let the handler report it as logging does
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


REDACT = RedactContacts()


class NoResultRows(logging.Filter):
    """Drops SQLAlchemy's DEBUG lines that print result rows: a customer row is a name, a phone and an email.
    (Statement parameters are hidden by the engines themselves: `hide_parameters`.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(("Row ", "Col ")))


NO_ROWS = NoResultRows()
SQL_LOGGER = "sqlalchemy.engine.Engine"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the moment of writing (it may be swapped, e.g. by click's runner)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        """The stream is always the current sys.stderr."""


def guard_library_loggers() -> None:
    """Put the redaction filter on the loggers of libraries that log URLs, request data or SQL, and keep SQL
    result rows out of the log altogether."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if REDACT not in logger.filters:
            logger.addFilter(REDACT)
    sql = logging.getLogger(SQL_LOGGER)
    if NO_ROWS not in sql.filters:
        sql.addFilter(NO_ROWS)


def setup_logging(level: str | int | None = None) -> None:
    """The CLI's logging: a stderr handler when nothing else is configured, the redaction filter on every root
    handler and on the libraries' loggers, and the root level when one is given."""
    root = logging.getLogger()
    if not root.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    for handler in root.handlers:
        if REDACT not in handler.filters:
            handler.addFilter(REDACT)
    if level is not None:
        root.setLevel(level.upper() if isinstance(level, str) else level)
    guard_library_loggers()
