"""A Twilio Messages API stand-in: a real, threaded HTTP server on 127.0.0.1 that the real `twilio` client talks to.

It implements what notifier uses of API v2010:
- POST /2010-04-01/Accounts/{AccountSid}/Messages.json   create (To, From or MessagingServiceSid, Body, ...)
- GET  /2010-04-01/Accounts/{AccountSid}/Messages.json   list, newest first, filtered by To, From, DateSent,
                                                           DateSent< and DateSent>, paged by PageSize / Page
- GET  /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json

Requests and responses are checked against Twilio's own OpenAPI document with openapi-core (`validate="all"`);
the document has no error schema, so error bodies are checked by hand for Twilio's shape
{"code", "message", "more_info", "status"}. openapi-core needs ~20 ms per request, so high-volume runs (the crash
test, the benchmark) use `validate="sample"` (the first few of each operation, then one in `sample_every`).
Every disagreement is kept in `validation_errors`; tests assert it stays empty.

Faults are injected with `Fault` rules (a status and Twilio error code, Retry-After, a delay, a message accepted
but answered late or with an error, for one number or all, a number of times or for ever). Every accepted message
is kept, with its arrival time and its segment count as Twilio bills it (smsutil).

Run it alone for the benchmark: python -m tests.standins.twilio_standin --latency 0.1 --validate off
(GET /_standin/messages, not part of Twilio's API, then tells another process what arrived and when).
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import format_datetime, parsedate_to_datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import smsutil
from werkzeug.exceptions import ClientDisconnected
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

HERE = Path(__file__).resolve().parent
SPEC_PLACES = (HERE.parent / "fixtures" / "twilio_api_v2010.json",
               HERE.parents[2] / "shared" / "specs" / "twilio_api_v2010.json")
LIST_PATH = "/2010-04-01/Accounts/{AccountSid}/Messages.json"
ONE_PATH = "/2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "standin-auth-token-0123456789abcd"
ERROR_KEYS = {"code": int, "message": str, "more_info": str, "status": int}
_sids = itertools.count(1)


def spec_path() -> Path | None:
    """Where Twilio's OpenAPI document is (the repository's copy first), or None."""
    return next((path for path in SPEC_PLACES if path.is_file()), None)


@lru_cache(maxsize=1)
def openapi():  # noqa: ANN201 - openapi_core.OpenAPI, imported lazily (it is slow to import)
    """Twilio's OpenAPI document for the Messages paths, loaded once per process (None when it is absent)."""
    path = spec_path()
    if path is None:
        return None
    from openapi_core import Config, OpenAPI

    spec = json.loads(path.read_text(encoding="utf-8"))  # OpenAPI.from_path trips on the escaped characters
    spec["paths"] = {name: spec["paths"][name] for name in (LIST_PATH, ONE_PATH)}
    for item in spec["paths"].values():
        item["servers"] = [{"url": "/"}]  # the stand-in lives on 127.0.0.1, not api.twilio.com
    formats = {"phone-number": lambda value: isinstance(value, str) and bool(value.strip()),
               "date-time-rfc-2822": _is_rfc2822}
    return OpenAPI.from_dict(spec, config=Config(spec_validator_cls=None, extra_format_validators=formats))


def _is_rfc2822(value: object) -> bool:
    try:
        return parsedate_to_datetime(str(value)) is not None
    except (TypeError, ValueError):
        return False


@dataclass
class Fault:
    """One misbehaviour for POST .../Messages.json (`to`: only for that number; `times=None`: for ever)."""

    status: int = 500
    code: int | None = None
    message: str = "injected fault"
    retry_after: str | None = None
    delay: float = 0.0  # seconds before answering (longer than the client's timeout: the answer is lost)
    accept: bool = False  # keep the message although the answer is an error or late
    to: str | None = None
    times: int | None = 1


@dataclass
class StandInLog:
    """What the stand-in saw: requests (method, path, status) and validation problems."""

    requests: list[tuple[str, str, int]] = field(default_factory=list)
    validation_errors: list[str] = field(default_factory=list)


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Requests are kept in StandInLog, not printed."""


class TwilioStandIn:
    """The stand-in server. Use as a context manager, or start() / stop()."""

    def __init__(self, account_sid: str = ACCOUNT_SID, auth_token: str = AUTH_TOKEN, latency: float = 0.0,
                 validate: str = "all", sample_every: int = 25, defer_date_sent: bool = False) -> None:
        self.account_sid, self.auth_token = account_sid, auth_token
        self.latency = latency
        self.validate = validate if openapi_available() else "off"
        self.sample_every = sample_every
        self.defer_date_sent = defer_date_sent  # a message stays "queued" without a DateSent, as Twilio's queue does
        self.messages: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self.log = StandInLog()
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._server = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self, port: int = 0) -> TwilioStandIn:
        """Listen on 127.0.0.1 (a free port unless one is given) in a background thread."""
        if self.validate != "off":
            openapi()  # load the document now, not inside the first request (a client would time out)
        self._server = make_server("127.0.0.1", port, self._wsgi, threaded=True, request_handler=_QuietHandler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="twilio-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> TwilioStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """What NOTIFIER_TWILIO_API_BASE should be."""
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def validation_errors(self) -> list[str]:
        """Requests or responses that disagreed with Twilio's OpenAPI document (or its error shape)."""
        return self.log.validation_errors

    # test helpers

    def add_fault(self, fault: Fault) -> None:
        """Misbehave as `fault` says for the next matching create request(s)."""
        with self._lock:
            self.faults.append(fault)

    def messages_to(self, number: str) -> list[dict[str, Any]]:
        """Every accepted message to one number."""
        with self._lock:
            return [m for m in self.messages if m["to"] == number]

    def signed_callback(self, url: str, message: dict[str, Any], status: str, error_code: int | None = None
                        ) -> tuple[dict[str, str], str]:
        """The form fields and X-Twilio-Signature Twilio would POST to a StatusCallback URL."""
        from twilio.request_validator import RequestValidator

        fields = {"AccountSid": self.account_sid, "ApiVersion": "2010-04-01", "MessageSid": message["sid"],
                  "SmsSid": message["sid"], "MessageStatus": status, "SmsStatus": status, "To": message["to"],
                  "From": message["from"] or "+15005550006"}
        if error_code:
            fields["ErrorCode"] = str(error_code)
        return fields, RequestValidator(self.auth_token).compute_signature(url, fields)

    # the server

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        arrived = time.monotonic()
        try:
            response = self._answer(request, arrived)
        except ClientDisconnected:  # the client died mid-request (the crash test kills it): nothing to answer
            response = Response(status=400)
        with self._lock:
            self.log.requests.append((request.method, request.path, response.status_code))
        return response(environ, start_response)

    def _answer(self, request: Request, arrived: float) -> Response:
        prefix = f"/2010-04-01/Accounts/{self.account_sid}/Messages"
        if not self._authorised(request):
            return self._error(request, 401, 20003, "Authentication Error - invalid username")
        if self.latency:
            time.sleep(self.latency)
        if request.path == "/_standin/messages":
            return self._own_log(request)
        if request.path == prefix + ".json" and request.method == "POST":
            return self._create(request, arrived)
        if request.path == prefix + ".json" and request.method == "GET":
            return self._list(request)
        if request.path.startswith(prefix + "/") and request.path.endswith(".json") and request.method == "GET":
            return self._fetch(request, request.path[len(prefix) + 1:-5])
        return self._error(request, 404, 20404, f"The requested resource {request.path} was not found")

    def _authorised(self, request: Request) -> bool:
        header = request.headers.get("Authorization", "")
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return header == f"Basic {expected}"

    def _create(self, request: Request, arrived: float) -> Response:
        self._check_request(request, "create")
        form = request.form
        if not form.get("To"):
            return self._error(request, 400, 21604, "A 'To' phone number is required.")
        if not form.get("Body"):
            return self._error(request, 400, 21602, "Message body is required.")
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return self._error(request, 400, 21603, "A 'From' phone number is required.")
        fault = self._take_fault(form["To"])
        message = None
        if fault is None or fault.accept:
            message = self._store(form, arrived)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.status != 201:
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                return self._error(request, fault.status, fault.code, fault.message, headers)
        return self._json(request, 201, self._resource(message), "create")

    def _own_log(self, request: Request) -> Response:
        # Not Twilio's API: lets a benchmark in another process read (GET) or clear (DELETE) what arrived.
        with self._lock:
            if request.method == "DELETE":
                self.messages.clear()
            arrivals = [[m["arrived"], m["num_segments"], m["to"]] for m in self.messages]
        return Response(json.dumps({"arrivals": arrivals}), content_type="application/json")

    def _take_fault(self, to: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if (fault.to is None or fault.to == to) and (fault.times is None or fault.times > 0):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def _store(self, form: Any, arrived: float) -> dict[str, Any]:
        now = datetime.now(UTC)
        body = form["Body"]
        message = {"sid": f"SM{next(_sids):08x}{secrets.token_hex(12)}", "to": form["To"],
                   "from": form.get("From") or None, "messaging_service_sid": form.get("MessagingServiceSid"),
                   "body": body, "num_segments": len(smsutil.split(body).parts), "status": "queued",
                   "date_created": now, "date_sent": None if self.defer_date_sent else now,
                   "status_callback": form.get("StatusCallback"), "validity_period": form.get("ValidityPeriod"),
                   "arrived": arrived}
        with self._lock:
            self.messages.append(message)
        return message

    def _list(self, request: Request) -> Response:
        self._check_request(request, "list")
        args = request.args
        with self._lock:
            found = [m for m in self.messages if _matches(m, args)]
        found.sort(key=lambda m: m["date_created"], reverse=True)
        size = min(1000, max(1, int(args.get("PageSize", 50))))
        page = max(0, int(args.get("Page", 0)))
        chunk = found[page * size:(page + 1) * size]
        filters = {k: v for k, v in args.items() if k in ("To", "From", "DateSent", "DateSent<", "DateSent>")}
        base = f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"

        def page_uri(number: int) -> str:
            return f"{base}?{urlencode({**filters, 'PageSize': size, 'Page': number})}"

        more = (page + 1) * size < len(found)
        body = {"messages": [self._resource(m) for m in chunk], "page": page, "page_size": size,
                "start": page * size, "end": page * size + max(0, len(chunk) - 1), "uri": page_uri(page),
                "first_page_uri": page_uri(0), "next_page_uri": page_uri(page + 1) if more else None,
                "previous_page_uri": page_uri(page - 1) if page else None}
        return self._json(request, 200, body, "list")

    def _fetch(self, request: Request, sid: str) -> Response:
        self._check_request(request, "fetch")
        with self._lock:
            message = next((m for m in self.messages if m["sid"] == sid), None)
        if message is None:
            return self._error(request, 404, 20404, f"The requested resource {request.path} was not found")
        return self._json(request, 200, self._resource(message), "fetch")

    def _resource(self, message: dict[str, Any]) -> dict[str, Any]:
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{message['sid']}.json"
        return {"account_sid": self.account_sid, "api_version": "2010-04-01", "body": message["body"],
                "date_created": _rfc2822(message["date_created"]), "date_sent": _rfc2822(message["date_sent"]),
                "date_updated": _rfc2822(message["date_sent"] or message["date_created"]),
                "direction": "outbound-api", "error_code": None, "error_message": None, "from": message["from"],
                "messaging_service_sid": message["messaging_service_sid"], "num_media": "0",
                "num_segments": str(message["num_segments"]), "price": None, "price_unit": "USD",
                "sid": message["sid"], "status": message["status"] if message["date_sent"] is None else "sent",
                "subresource_uris": {"media": uri.replace(".json", "/Media.json")}, "to": message["to"],
                "uri": uri}

    # answers and their checks

    def _json(self, request: Request, status: int, body: dict[str, Any], operation: str) -> Response:
        response = Response(json.dumps(body), status=status, content_type="application/json")
        self._check_response(request, response, operation)
        return response

    def _error(self, request: Request, status: int, code: int | None, message: str,
               headers: dict[str, str] | None = None) -> Response:
        body = {"code": code, "message": message,
                "more_info": f"https://www.twilio.com/docs/errors/{code}" if code else "", "status": status}
        if code is None:
            body["code"] = status
        for key, kind in ERROR_KEYS.items():
            if not isinstance(body.get(key), kind):
                self._problem(f"error body {body} lacks {key} ({kind.__name__})")
        return Response(json.dumps(body), status=status, content_type="application/json", headers=headers or {})

    def _sampled(self, operation: str) -> bool:
        if self.validate == "off":
            return False
        with self._lock:
            seen = self._seen[operation] = self._seen.get(operation, 0) + 1
        return self.validate == "all" or seen <= 5 or seen % self.sample_every == 0

    def _check_request(self, request: Request, operation: str) -> None:
        if not self._sampled(operation + ":request"):
            return
        from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest

        result = openapi().unmarshal_request(WerkzeugOpenAPIRequest(request))
        for error in result.errors:
            self._problem(f"{request.method} {request.path}: request: {error!r} {error.__cause__!r}")

    def _check_response(self, request: Request, response: Response, operation: str) -> None:
        if not self._sampled(operation + ":response"):
            return
        from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse

        result = openapi().unmarshal_response(WerkzeugOpenAPIRequest(request), WerkzeugOpenAPIResponse(response))
        for error in result.errors:
            self._problem(f"{request.method} {request.path}: response: {error!r} {error.__cause__!r}")

    def _problem(self, text: str) -> None:
        with self._lock:
            self.log.validation_errors.append(text)


def openapi_available() -> bool:
    """True when Twilio's OpenAPI document can be found."""
    return spec_path() is not None


def _rfc2822(moment: datetime | None) -> str | None:
    return format_datetime(moment).replace("-0000", "+0000") if moment else None


def _day(value: str) -> date:
    # Twilio takes "YYYY-MM-DD" and full timestamps here; only the GMT date counts.
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC).date() if "T" in value \
        else date.fromisoformat(value)


def _matches(message: dict[str, Any], args: Any) -> bool:
    if args.get("To") and message["to"] != args["To"]:
        return False
    if args.get("From") and message["from"] != args["From"]:
        return False
    sent = message["date_sent"].date() if message["date_sent"] else None
    for key, test in (("DateSent", lambda d, v: d == v), ("DateSent<", lambda d, v: d <= v),
                      ("DateSent>", lambda d, v: d >= v)):
        if args.get(key) and (sent is None or not test(sent, _day(args[key]))):
            return False
    return True


def main(argv: list[str] | None = None) -> None:
    """Serve until killed; prints the base URL on the first line (for the benchmark)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--validate", choices=("all", "sample", "off"), default="sample")
    options = parser.parse_args(argv)
    standin = TwilioStandIn(latency=options.latency, validate=options.validate).start(options.port)
    print(standin.base_url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        standin.stop()


if __name__ == "__main__":
    main()
