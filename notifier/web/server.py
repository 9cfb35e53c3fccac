"""The HTTP server behind `notifier serve`: werkzeug's threaded server with an access log that holds no secret and
an idle timeout on every client connection.

A customer's link is a bearer token: whoever reads /c/<token> in a log can choose for that customer, so the log
keeps the route and cuts the token (/c/…, /s/…, /unsubscribe/…), and masks any phone number or email address
and secret-looking query value. A client that opens a connection and sends nothing (or stops half-way) holds a
server thread; after `Settings.web_idle_timeout_seconds` of silence the connection is closed and the thread freed.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from notifier.privacy import redact
from notifier.store.settings import Settings, mask_url

# The routes whose last part is a signed token: the choice page, the satisfaction page, the email unsubscribe.
LINK_IN_PATH = re.compile(r"(/(?:c|s|unsubscribe)/)[^/?#]+")
LINK_IN_TEXT = re.compile(r"(/(?:c|s|unsubscribe)/)[^\s/?#\"'()]+")


def loggable_path(path: str) -> str:
    """A request path fit for a log: a link's token cut, phone numbers, email addresses and secret query values
    masked."""
    route, separator, query = mask_url(path).partition("?")
    # Value by value: an email address may hold "&" and "=", so in one piece a query would read as one address.
    values = [name + equals + redact(value) for name, equals, value in
              (parameter.partition("=") for parameter in query.split("&"))]
    return redact(LINK_IN_PATH.sub(r"\1…", route)) + separator + "&".join(values)


def loggable_text(text: str) -> str:
    """Any server message fit for a log (an error may quote the request line): the same cuts and masks."""
    return redact(mask_url(LINK_IN_TEXT.sub(r"\1…", text)))


class AccessLogHandler(WSGIRequestHandler):
    """werkzeug's request handler, logging each request with its secrets cut."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """One access-log line per request: method, path without its token, version, status, size."""
        path = getattr(self, "path", None)
        line = f"{self.command} {loggable_path(path)} {self.request_version}" if path else self.requestline
        self.log("info", '"%s" %s %s', line.translate(self._control_char_table), code, size)

    def log(self, type: str, message: str, *args: Any) -> None:  # noqa: A002 - werkzeug's own signature
        """Every line the server writes, with tokens, contacts and secrets cut (errors quote request lines)."""
        super().log(type, "%s", loggable_text(message % args if args else message))


def make_web_server(app: Flask, host: str, port: int, settings: Settings) -> BaseWSGIServer:
    """The threaded server for the web app, bound and ready for serve_forever(). (When it cannot listen there,
    werkzeug itself says why on stderr and exits with status 1.)"""
    # socketserver applies a handler class's `timeout` to each client socket: a silent client is dropped.
    handler = type("IdleTimeoutHandler", (AccessLogHandler,), {"timeout": settings.web_idle_timeout_seconds})
    return make_server(host, port, app, threaded=True, request_handler=handler)
