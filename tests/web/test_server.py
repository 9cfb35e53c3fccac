"""Issue 16, finding 6: the server behind `notifier serve`, over real sockets. Its access log must not hold a
working link (anyone who reads it could choose for those customers), a phone number or an email address; and a
client that opens a connection and sends nothing must not hold a server thread for ever."""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import replace

import pytest
import requests

from notifier.delivery.optouts import unsubscribe_token
from notifier.web.app import create_app
from notifier.web.server import make_web_server
from tests.aftercare.test_responses import NOW, factory, planned_template, sms_notice  # noqa: F401
from tests.web.test_security_web import token_of

IDLE_SECONDS = 0.5


@pytest.fixture
def server(factory, tmp_settings):  # noqa: F811
    settings = replace(tmp_settings, web_idle_timeout_seconds=IDLE_SECONDS)
    served = make_web_server(create_app(settings, factory, clock=lambda: NOW), "127.0.0.1", 0, settings)
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    yield served
    served.shutdown()
    served.server_close()
    thread.join(10)


def test_the_access_log_holds_no_working_link_phone_or_email(server, factory, tmp_settings, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="werkzeug")
    base = f"http://127.0.0.1:{server.port}"
    token = token_of(sms_notice(factory, "en"))
    unsubscribe = unsubscribe_token(tmp_settings.secret_key, 1)
    contacts = "?to=%2B8613800138000&mail=li.wei%40example.com&api_key=k3y-s3cret"

    page = requests.get(f"{base}/c/{token}?lang=en", timeout=10)
    others = [requests.get(f"{base}/unsubscribe/{unsubscribe}", timeout=10),
              requests.get(f"{base}/s/1-2.{'A' * 27}", timeout=10),
              requests.get(f"{base}/nowhere{contacts}", timeout=10)]

    assert page.status_code == 200 and "/c/" in page.text
    assert [response.status_code for response in others] == [404, 404, 404]
    logged = [record.getMessage() for record in caplog.records if record.name == "werkzeug"]
    assert any('"GET /c/…?lang=en HTTP/1.1" 200' in line for line in logged), logged
    assert any('"GET /unsubscribe/… HTTP/1.1" 404' in line for line in logged), logged
    assert any('"GET /s/… HTTP/1.1" 404' in line for line in logged), logged
    text = "\n".join(logged)
    for secret in (token, token.split(".")[1], unsubscribe.split(".")[1], "A" * 27, "8613800138000", "li.wei",
                   "k3y-s3cret"):
        assert secret not in text


def test_a_half_open_connection_is_closed_after_the_idle_timeout(server):
    for opening in (b"", b"GET /c/"):  # nothing at all, or a request line that never ends
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as silent:
            silent.sendall(opening)
            silent.settimeout(IDLE_SECONDS * 10)  # far beyond the server's idle timeout: this read must not hang
            assert silent.recv(1024) == b""  # the server closed the connection

    assert requests.get(f"http://127.0.0.1:{server.port}/c/nothing", timeout=10).status_code == 404

