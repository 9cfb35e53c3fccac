"""Email replies: posted by a mail gateway (signed) or read over IMAP, matched to the booking by the notice they
answer (In-Reply-To), a booking reference or the sender, and kept in the booking's history: a choice from the
customer's own address, a score, HELP, or their words (without the quoted notice) for the desk."""

from __future__ import annotations

import socketserver
import threading
from dataclasses import replace
from datetime import timedelta
from email.message import EmailMessage

import pytest
from sqlalchemy import select, update

from notifier.store.db import transaction
from notifier.aftercare.followups import refresh, worklist
from notifier.aftercare.inbound_email import InboundEmailError, poll_imap, signature
from notifier.store.models import Booking, CustomerResponse, Notification
from notifier.aftercare.satisfaction import queue_requests
from tests.conftest import DEMO_NOW
from tests.aftercare.test_closing_the_loop import dispatch, typhoon, typhoon_template, web  # noqa: F401
from tests.aftercare.test_satisfaction import resolved, resolved_template  # noqa: F401

SECRET = "gateway-secret"


def email_reply(sender: str, body: str, in_reply_to: str | None = None, subject: str = "Re: your sailing",
                message_id: str = "<reply-1@mail.example>", **headers: str) -> bytes:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, "notices@ferry.example", subject
    message["Message-ID"] = message_id
    if in_reply_to:
        message["In-Reply-To"], message["References"] = in_reply_to, in_reply_to
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message.as_bytes()


def post(client, raw: bytes, secret: str = SECRET):
    return client.post("/email/inbound", data=raw, content_type="message/rfc822",
                       headers={"X-Notifier-Signature": signature(secret, raw)})


def email_notice(factory, booking_id: int, purpose: str = "notice") -> Notification:
    with factory() as session:
        return session.scalar(select(Notification).where(Notification.booking_id == booking_id,
                                                         Notification.channel == "email",
                                                         Notification.purpose == purpose))


def responses_of(factory, booking_id: int) -> list[tuple[str, str, str | None]]:
    with factory() as session:
        return session.execute(select(CustomerResponse.channel, CustomerResponse.choice, CustomerResponse.raw_text)
                               .where(CustomerResponse.booking_id == booking_id)
                               .order_by(CustomerResponse.id)).all()


def test_a_reply_to_a_notice_is_kept_word_for_word_once(typhoon, web, tmp_settings):
    factory, _, roles = typhoon
    client, clock = web
    clock.now = DEMO_NOW + timedelta(hours=1)
    notice = email_notice(factory, roles["writes"])
    raw = email_reply("Writes <WRITES@example.com>", "Can I bring my bike?\nThanks\n\n"
                      "On Mon, 14 Sep 2026 at 08:02, Strait Ferries <notices@ferry.example> wrote:\n"
                      "> Your sailing is cancelled\n", notice.message_id)

    first, second = post(client, raw), post(client, raw)

    with factory() as session:
        ref = session.get(Booking, roles["writes"]).ref
    assert first.get_json() == {"outcome": "free_text", "booking": ref}
    assert second.get_json() == {"outcome": "duplicate", "booking": None}
    assert responses_of(factory, roles["writes"]) == [("email", "free_text", "Can I bring my bike?\nThanks")]
    with transaction(factory) as session:
        refresh(session, tmp_settings, clock.now)
        [item] = worklist(session, tmp_settings, reasons=("free-text",))
    assert item.booking_ref == ref and item.reply == "Can I bring my bike?\nThanks"


def test_unsigned_or_unconfigured_posts_are_refused(typhoon, web, tmp_settings):
    client, _ = web
    raw = email_reply("writes@example.com", "hello")
    assert client.post("/email/inbound", data=raw).status_code == 403
    assert post(client, raw, secret="not-the-secret").status_code == 403
    client.application.config["NOTIFIER_SETTINGS"] = replace(tmp_settings, inbound_email_secret="")
    assert post(client, raw).status_code == 404


def test_an_option_from_the_customers_own_address_is_a_choice(typhoon, web):
    factory, _, roles = typhoon
    client, clock = web
    clock.now = DEMO_NOW + timedelta(hours=1)
    notice = email_notice(factory, roles["sms_lost"])

    answer = post(client, email_reply("sms_lost@example.com", "R\n\n-- \nSent from my phone", notice.message_id))

    assert answer.get_json()["outcome"] == "choice"
    with factory() as session:
        booking = session.get(Booking, roles["sms_lost"])
        confirmations = session.scalars(select(Notification.channel).where(
            Notification.booking_id == booking.id, Notification.purpose == "confirmation")).all()
    assert booking.status == "refund" and sorted(confirmations) == ["email", "sms"]
    assert responses_of(factory, roles["sms_lost"]) == [("email", "refund", "R")]


def test_a_booking_reference_from_another_address_only_attaches_words(typhoon, web):
    factory, _, roles = typhoon
    client, clock = web
    clock.now = DEMO_NOW + timedelta(hours=1)
    with factory() as session:
        ref = session.get(Booking, roles["silent"]).ref

    answer = post(client, email_reply("someone@elsewhere.example", "1", subject=f"Booking {ref.lower()}"))

    assert answer.get_json() == {"outcome": "free_text", "booking": ref}
    with factory() as session:
        assert session.get(Booking, roles["silent"]).status == "confirmed"
    assert responses_of(factory, roles["silent"]) == [("email", "free_text", "1")]


def test_auto_replies_and_mail_about_nothing_we_sent_record_nothing(typhoon, web):
    factory, _, roles = typhoon
    client, _ = web
    notice = email_notice(factory, roles["writes"])
    away = email_reply("writes@example.com", "I am out of the office until Monday.", notice.message_id,
                       message_id="<away@mail.example>", Auto_Submitted="auto-replied")
    stranger = email_reply("nobody@elsewhere.example", "Hello?", message_id="<hello@mail.example>")

    assert post(client, away).get_json()["outcome"] == "ignored"
    assert post(client, stranger).get_json() == {"outcome": "unmatched", "booking": None}
    with factory() as session:
        assert session.scalar(select(CustomerResponse.id).where(CustomerResponse.channel == "email")) is None


def test_a_number_in_answer_to_the_satisfaction_email_is_a_score(resolved, web, tmp_settings):
    factory, _, roles, over = resolved
    client, clock = web
    with transaction(factory) as session:
        session.execute(update(Notification).where(Notification.booking_id == roles["sms_lost"],
                                                   Notification.channel == "sms").values(status="undelivered"))
    queue_requests(factory, tmp_settings, over + timedelta(minutes=5))
    dispatch(factory, tmp_settings, over + timedelta(minutes=6))
    request = email_notice(factory, roles["sms_lost"], purpose="satisfaction")
    clock.now = over + timedelta(hours=3)

    answer = post(client, email_reply("sms_lost@example.com", "４\n\nOn Tue, Strait Ferries wrote:\n> How did we do?",
                                      request.message_id, subject="Re: How did we do?"))

    assert answer.get_json()["outcome"] == "score"
    assert responses_of(factory, roles["sms_lost"])[-1] == ("email", "score", "４")


# --- IMAP ------------------------------------------------------------------------------------------------------------

class ImapStub:
    """A tiny IMAP4rev1 server on a free port: LOGIN, SELECT, UID SEARCH UNSEEN, UID FETCH, UID STORE, LOGOUT."""

    def __init__(self, messages: list[bytes], user: str = "desk", password: str = "s3cret pass") -> None:
        self.messages = {uid: raw for uid, raw in enumerate(messages, start=1)}
        self.seen: set[int] = set()
        self.user, self.password = user, password
        stub = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.wfile.write(b"* OK IMAP4rev1 stub ready\r\n")
                for line in self.rfile:
                    tag, _, rest = line.decode().rstrip("\r\n").partition(" ")
                    command, _, args = rest.partition(" ")
                    self.wfile.write(stub.answer(tag, command.upper(), args))
                    if command.upper() == "LOGOUT":
                        return

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, tag: str, command: str, args: str) -> bytes:
        done = f"{tag} OK {command} completed\r\n".encode()
        if command == "CAPABILITY":
            return b"* CAPABILITY IMAP4rev1\r\n" + done
        if command == "LOGIN":
            user, _, password = args.partition(" ")
            if (user.strip('"'), password.strip('"')) != (self.user, self.password):
                return f"{tag} NO [AUTHENTICATIONFAILED] Invalid credentials\r\n".encode()
            return done
        if command == "SELECT":
            return f"* {len(self.messages)} EXISTS\r\n* FLAGS (\\Seen)\r\n{tag} OK [READ-WRITE] SELECT\r\n".encode()
        if command == "UID":
            action, _, rest = args.partition(" ")
            if action.upper() == "SEARCH":
                unseen = " ".join(str(uid) for uid in self.messages if uid not in self.seen)
                return f"* SEARCH {unseen}\r\n".encode() + done
            uid = int(rest.split(" ")[0])
            if action.upper() == "FETCH":
                raw = self.messages[uid]
                return f"* {uid} FETCH (UID {uid} BODY[] {{{len(raw)}}}\r\n".encode() + raw + b")\r\n" + done
            self.seen.add(uid)
            return f"* {uid} FETCH (UID {uid} FLAGS (\\Seen))\r\n".encode() + done
        if command == "LOGOUT":
            return b"* BYE\r\n" + done
        return f"{tag} BAD unknown command\r\n".encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_imap_replies_are_recorded_once_and_marked_seen(typhoon, tmp_settings):
    factory, _, roles = typhoon
    notice = email_notice(factory, roles["writes"])
    stub = ImapStub([email_reply("writes@example.com", "Which pier?", notice.message_id, message_id="<a@m>"),
                     email_reply("writes@example.com", "Away", notice.message_id, message_id="<b@m>",
                                 Auto_Submitted="auto-replied")])
    settings = replace(tmp_settings, imap_host="127.0.0.1", imap_port=stub.port, imap_ssl=False, imap_user="desk",
                       imap_password="s3cret pass")
    try:
        first = poll_imap(factory, settings, DEMO_NOW + timedelta(hours=1))
        second = poll_imap(factory, settings, DEMO_NOW + timedelta(hours=2))
        with pytest.raises(InboundEmailError, match="refused the login of 'desk'"):
            poll_imap(factory, replace(settings, imap_password="wrong"))
    finally:
        stub.close()

    assert (first.read, first.outcomes) == (2, {"free_text": 1, "ignored": 1})
    assert second.read == 0 and stub.seen == {1, 2}
    assert responses_of(factory, roles["writes"]) == [("email", "free_text", "Which pier?")]


def test_an_unreachable_imap_server_is_one_clear_error(tmp_settings, factory):
    settings = replace(tmp_settings, imap_host="127.0.0.1", imap_port=1, imap_ssl=False)
    with pytest.raises(InboundEmailError, match="cannot reach the IMAP server 127.0.0.1:1"):
        poll_imap(factory, settings)
