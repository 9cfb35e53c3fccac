"""No personal data where staff, logs or other systems read: a whole typhoon broadcast (SMS through a Twilio stand-in
that refuses, loses and rate-limits some messages; email through the file outbox; receipts, replies, a STOP, a web
choice, fallbacks and confirmations) logged at DEBUG by every logger, and then every console report of it, must not
contain any customer's phone number (E.164 or national), email address or name. Also: `config show` masks every
secret, the CLI's log handler masks contacts whoever logs them, database errors carry no parameters, and the
retention purge removes personal data past its time while the figures and the audit trail stay."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

import phonenumbers
import pytest
from click.testing import CliRunner
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from twilio.request_validator import RequestValidator

from cli import main
from notifier.channels.file import FileEmailChannel
from notifier.channels.twilio_sms import TwilioSmsChannel
from notifier.store.db import transaction
from notifier.delivery.dispatch import Dispatcher
from notifier.delivery.providers import twilio_config
from notifier.logs import RedactContacts, setup_logging
from notifier.store.models import (AuditEntry, Booking, Customer, CustomerResponse, DeliveryAttempt, FeedError,
                                   Notification, OptOut, Sailing, utcnow)
from notifier.web.app import create_app
from tests.standins.fixtures import provider_settings
from tests.standins.twilio_standin import Fault, TwilioStandIn
from tests.ops.test_pipeline import run_pipeline

CJK_RUN = re.compile(r"[\u3400-\u9fff]{2,}")
DIGIT_RUN = re.compile(r"\d(?:[\d \-.()/]*\d)?")
EMAIL_LIKE = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


# --- what counts as personal data, and how to find it ----------------------------------------------------------------

@dataclass(frozen=True)
class Person:
    ref: str
    name: str
    phone: str | None
    email: str | None

    def national(self) -> str | None:
        """The phone's national significant number, digits only (what a national format shows)."""
        if not self.phone:
            return None
        return str(phonenumbers.parse(self.phone, None).national_number)


def everyone(factory) -> list[Person]:
    with factory() as session:
        return [Person(*row) for row in session.execute(select(Customer.ref, Customer.name, Customer.phone,
                                                               Customer.email))]


def leaks(people: list[Person], texts: dict[str, str]) -> list[str]:
    """Every (whose, what, where) found: phone numbers in any format (as digit runs), emails, names."""
    found = []
    for where, raw in texts.items():
        text = unquote(raw)
        runs = {re.sub(r"\D", "", run) for run in DIGIT_RUN.findall(text)}
        emails = {address.lower() for address in EMAIL_LIKE.findall(text)}
        cjk = set(CJK_RUN.findall(text))
        for person in people:
            national = person.national()
            if national and any(national in run for run in runs if len(run) >= len(national)):
                found.append(f"{person.ref} phone in {where}")
            if person.email and person.email.lower() in emails:
                found.append(f"{person.ref} email in {where}")
            if person.name and (any(person.name in run for run in cjk) if CJK_RUN.fullmatch(person.name)
                                else person.name in text):
                found.append(f"{person.ref} name in {where}")
    return found


def test_the_leak_finder_finds_every_format():
    person = Person("C1", "Alex Chan", "+8613912349768", "alex.chan@example.com")
    chinese = Person("C2", "陈伟明", "+85291234567", None)
    for shown in ("+8613912349768", "+86 139 1234 9768", "139-1234-9768", "(139) 1234 9768", "To=%2B8613912349768",
                  "ALEX.CHAN@example.com", "alex.chan%40example.com", "Dear Alex Chan,", "9123 4567", "尊敬的陈伟明："):
        assert leaks([person, chinese], {"x": shown}), shown
    for masked in ("+86 139****9768", "a***n@example.com", "A. C.", "陈**", "+852 9***4567", "booking B0001234"):
        assert not leaks([person, chinese], {"x": masked}), masked


# --- the whole broadcast ---------------------------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.offset = timedelta(0)

    def __call__(self):
        return utcnow() + self.offset


def sign(settings, path: str, fields: dict[str, str]) -> dict[str, str]:
    url = settings.public_base_url + path
    return {"X-Twilio-Signature": RequestValidator(settings.twilio_auth_token).compute_signature(url, fields)}


def sms_to(factory, language: str, skip: set[str]) -> Notification:
    with factory() as session:
        return session.scalars(select(Notification).where(
            Notification.channel == "sms", Notification.language == language, Notification.purpose == "notice",
            Notification.recipient.not_in(skip)).order_by(Notification.id)).first()


def cli_outputs(settings, refs: list[str], tmp_path: Path) -> dict[str, str]:
    """What the duty officer and the desk read about the night, command by command."""
    env = {"NOTIFIER_CONFIG": "", "NOTIFIER_DATABASE_URL": settings.database_url,
           "NOTIFIER_OUTBOX_DIR": settings.outbox_dir, "NOTIFIER_SECRET_KEY": settings.secret_key}
    runner = CliRunner()
    commands = [["report"], ["report", "--json"], ["report", "--html", str(tmp_path / "report.html")],
                ["audit", "--limit", "100000"], ["audit", "--json", "--limit", "100000"], ["broadcast", "list"],
                ["feeds", "list"], ["booking", "show", "NO-SUCH-REF"]]
    commands += [["booking", "show", ref] for ref in refs]
    if "followups" in main.commands:
        commands += [["followups", "list", "--all"], ["followups", "list", "--all", "--csv"]]
    outputs = {}
    for command in commands:
        result = runner.invoke(main, command, env=env)
        assert result.exit_code in (0, 2), (command, result.output)
        outputs[" ".join(command)] = result.output
    outputs["report.html"] = (tmp_path / "report.html").read_text(encoding="utf-8")
    return outputs


def stored_texts(factory) -> dict[str, str]:
    """Error texts and the audit trail, as stored (what reports and the desk quote)."""
    with factory() as session:
        return {
            "notice errors": "\n".join(filter(None, session.scalars(select(Notification.error_message)))),
            "attempt errors": "\n".join(filter(None, session.scalars(select(DeliveryAttempt.error_message)))),
            "feed errors": "\n".join(session.scalars(select(FeedError.message))),
            "audit trail": "\n".join(json.dumps([e.actor, e.action, e.subject_id, e.details], ensure_ascii=False,
                                                default=str) for e in session.scalars(select(AuditEntry))),
            "dedup-free outbox metadata": "\n".join(f"{n.template} {n.status} {n.error_code}"
                                                    for n in session.scalars(select(Notification)))}


def every_logger_at_debug(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        if isinstance(logging.root.manager.loggerDict[name], logging.Logger):
            caplog.set_level(logging.DEBUG, logger=name)


def test_a_typhoon_night_leaves_no_contact_or_name_in_logs_reports_or_errors(factory, demo_db, tmp_settings,
                                                                            caplog, tmp_path):
    every_logger_at_debug(caplog)
    with TwilioStandIn(validate="off") as standin:
        settings = provider_settings(tmp_settings, standin)
        run_pipeline(factory, settings, demo_db.epoch)

        # The provider refuses one number as invalid (quoting it, as Twilio does), finds another STOPped, takes a
        # third but loses the answer (looked up later), and rate-limits a fourth once.
        chosen: list[Notification] = []
        for language in ("zh-CN", "en", "zh-CN", "en", "zh-CN", "en", "zh-CN"):
            chosen.append(sms_to(factory, language, {n.recipient for n in chosen}))
        invalid, stopped, lost, busy, chooser, chatty, stopper = chosen
        standin.add_fault(Fault(400, 21211, f"The 'To' number {invalid.recipient} is not a valid phone number.",
                                to=invalid.recipient))
        standin.add_fault(Fault(400, 21610, "Attempt to send to unsubscribed recipient", to=stopped.recipient))
        standin.add_fault(Fault(500, 20500, "Internal Server Error", accept=True, to=lost.recipient))
        standin.add_fault(Fault(429, 20429, "Too Many Requests", retry_after="0", to=busy.recipient))

        clock = Clock()
        channels = {"sms": TwilioSmsChannel(twilio_config(settings)),
                    "email": FileEmailChannel(settings.outbox_dir, "n@x")}
        dispatcher = Dispatcher(factory, settings, channels, clock=clock)
        dispatcher.run(drain=True)
        clock.offset = timedelta(seconds=30)  # the lost answer's lease has run out: it is looked up
        dispatcher.run(drain=True)

        # Receipts, replies and a web choice.
        # The links' deadlines are the demo's (around DEMO_NOW): the page and receipts run on that clock.
        app = create_app(settings, factory, clock=lambda: demo_db.epoch + timedelta(hours=1))
        web = app.test_client()
        with factory() as session:
            delivered = session.scalars(select(Notification).where(Notification.status == "sent",
                                                                   Notification.channel == "sms")).all()[:2]
        for notice, status, code in ((delivered[0], "delivered", None), (delivered[1], "undelivered", "30005")):
            fields = {"MessageSid": notice.provider_id, "MessageStatus": status, "To": notice.recipient,
                      "From": settings.twilio_from, "AccountSid": settings.twilio_account_sid}
            if code:
                fields["ErrorCode"] = code
            path = f"/twilio/status?n={notice.id}"
            assert web.post(path, data=fields, headers=sign(settings, path, fields)).status_code == 204
        for notice, body in ((chooser, "1"), (stopper, "STOP"),
                             (chatty, f"Please call me on {chatty.recipient} or mail me at chatty@example.org")):
            fields = {"From": notice.recipient, "To": settings.twilio_from, "Body": body,
                      "MessageSid": f"SM{notice.id:032x}", "AccountSid": settings.twilio_account_sid}
            assert web.post("/twilio/inbound", data=fields,
                            headers=sign(settings, "/twilio/inbound", fields)).status_code == 200
        assert web.post("/twilio/inbound", data={"From": chooser.recipient, "Body": "R"}).status_code == 403
        with factory() as session:
            web_notice = session.scalars(select(Notification).where(
                Notification.channel == "sms", Notification.status == "sent",
                Notification.body_text.contains("https://ferry.example/c/"),
                Notification.booking_id.not_in([n.booking_id for n in chosen])).order_by(Notification.id.desc())
            ).first()
        link = urlsplit(re.search(r"https://ferry\.example/c/\S+", web_notice.body_text).group(0)).path
        page = web.get(link).get_data(as_text=True)
        form = re.search(r'name="form_token" value="([^"]+)"', page).group(1)
        assert web.post(link, data={"form_token": form, "option": "R"}).status_code == 303

        # Confirmations and fallbacks go out; the lost message's second look-up happens too.
        clock.offset = timedelta(minutes=2)
        dispatcher.run(drain=True)
        dispatcher.close()
        channels["sms"].close()
    assert standin.messages_to(lost.recipient) and len(standin.messages_to(lost.recipient)) == 1

    with factory() as session:
        outcomes = dict(session.execute(select(Notification.status, func.count())
                                        .group_by(Notification.status)).all())
        refs = list(session.scalars(select(Booking.ref).where(Booking.id.in_(
            [n.booking_id for n in chosen] + [web_notice.booking_id]))))
        refs += list(session.scalars(select(Booking.ref).join(Notification, Notification.booking_id == Booking.id)
                                     .where(Notification.status.in_(["failed", "undelivered"])).distinct()))
        refs += list(session.scalars(select(Booking.ref).order_by(Booking.id).limit(15)))
    assert outcomes.get("failed") and outcomes.get("sent") and outcomes.get("undelivered")

    texts = {"logs": caplog.text, "log messages": "\n".join(r.getMessage() for r in caplog.records)}
    texts |= cli_outputs(settings, sorted(set(refs)), tmp_path)
    texts |= stored_texts(factory)
    people = everyone(factory)

    assert len(caplog.records) > 1000  # the capture really ran at DEBUG (SQL, HTTP, the dispatcher ...)
    assert "***" in texts[f"booking show {refs[0]}"]
    assert leaks(people, texts) == []
    # The mailbox the customer typed into the reply is masked too, wherever the reply is quoted.
    assert not any("chatty@example.org" in text for text in texts.values())


def test_the_broadcast_preview_shows_no_customers_name(factory, demo_db, tmp_settings):
    run_pipeline(factory, tmp_settings, demo_db.epoch)
    env = {"NOTIFIER_CONFIG": "", "NOTIFIER_DATABASE_URL": tmp_settings.database_url}
    with factory() as session:
        broadcast_id = session.scalar(select(func.min(Notification.broadcast_id)))
    shown = CliRunner().invoke(main, ["broadcast", "preview", str(broadcast_id), "--all"], env=env).output
    assert leaks(everyone(factory), {"broadcast preview": shown}) == []


# --- secrets, the log handler, database errors -----------------------------------------------------------------------

SECRETS = {"NOTIFIER_TWILIO_AUTH_TOKEN": "tw-secret-2a1f", "NOTIFIER_SMTP_PASSWORD": "smtp-secret-77c0",
           "NOTIFIER_SECRET_KEY": "link-secret-9d3e", "NOTIFIER_IMAP_PASSWORD": "imap-secret-51b2",
           "NOTIFIER_INBOUND_EMAIL_SECRET": "inbound-secret-0e4d",
           "NOTIFIER_DATABASE_URL": "postgresql+psycopg://ops:db-secret-6c8a@db.example/notifier?password=db-q-6c8a"}


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_config_show_masks_every_secret(tmp_path, json_flag):
    config = tmp_path / "notifier.toml"
    config.write_text('[[feeds]]\nname = "met"\nurl = "https://feeder:feed-secret-31aa@met.example/cap.atom?'
                      'api_key=feed-key-8f8f&region=hk"\nformat = "atom"\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(config), "config", "show", *json_flag], env=SECRETS)

    assert result.exit_code == 0, result.output
    assert not re.search(r"secret-|feed-key|db-q-", result.output), result.output
    assert "****" in result.output and "met.example/cap.atom" in result.output and "region=hk" in result.output
    assert "ops:****@db.example" in result.output


def test_the_cli_installs_a_log_handler_that_masks_contacts(monkeypatch, capsys):
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh process: no handler configured yet
    monkeypatch.setattr(root, "level", root.level)
    result = CliRunner().invoke(main, ["--log-level", "debug", "config", "show"], env={"NOTIFIER_CONFIG": ""})
    assert result.exit_code == 0
    assert root.level == logging.DEBUG
    assert any(isinstance(f, RedactContacts) for handler in root.handlers for f in handler.filters)

    log = logging.getLogger("notifier.somewhere")
    log.info("told %s and %s", "+8613912349768", "li.wei@example.com")
    try:
        raise ValueError("Twilio: The 'To' number +85291234567 is not valid; GET /Messages.json?To=%2B85291234567")
    except ValueError:
        log.exception("send failed for chen@example.org")

    written = capsys.readouterr().err
    assert "+86 139****9768" in written and "l***i@example.com" in written and "c***n@example.org" in written
    assert not leaks([Person("C1", "Li Wei", "+8613912349768", "li.wei@example.com"),
                      Person("C2", "Chen", "+85291234567", "chen@example.org")], {"stderr": written})


def test_the_libraries_loggers_mask_contacts_for_every_handler(caplog):
    setup_logging()
    caplog.set_level(logging.DEBUG)
    logging.getLogger("urllib3.connectionpool").debug('%s "%s %s %s" %s', "http://127.0.0.1:1", "GET",
                                                      "/Messages.json?To=%2B8613912349768&PageSize=100", "HTTP/1.1",
                                                      200)
    assert "%2B8613912349768" not in caplog.text and "%2B86139****9768" in caplog.text


def test_database_errors_carry_no_parameters(factory, demo_db):
    with factory() as session:
        taken = session.scalars(select(Customer).where(Customer.phone.is_not(None),
                                                       Customer.email.is_not(None))).first()
    with pytest.raises(IntegrityError) as refused, transaction(factory) as session:
        session.execute(insert(Customer).values(ref=taken.ref, name=taken.name, phone=taken.phone,
                                                email=taken.email, language="en", channels=["sms"]))
    text = str(refused.value)
    person = Person(taken.ref, taken.name, taken.phone, taken.email)
    assert "UNIQUE" in text.upper() and leaks([person], {"error": text}) == []


# --- retention -----------------------------------------------------------------------------------------------------

def test_purge_removes_old_personal_data_keeps_recent_data_figures_and_audit(factory, demo_db, tmp_settings):
    run_pipeline(factory, tmp_settings, demo_db.epoch)
    from notifier.channels.file import FileSmsChannel
    from notifier.delivery.dispatch import dispatch_all

    dispatch_all(factory, tmp_settings, {"sms": FileSmsChannel(tmp_settings.outbox_dir),
                                         "email": FileEmailChannel(tmp_settings.outbox_dir, "n@x")})
    now = utcnow()
    long_ago = now - timedelta(days=400)
    with transaction(factory) as session:
        bookings = session.execute(select(Booking.id, Booking.customer_id, Booking.sailing_id)
                                   .join(Notification, Notification.booking_id == Booking.id).distinct()
                                   .order_by(Booking.id)).all()
        recent = bookings[:5]  # their sailings are still to come
        recent_sailings = {b.sailing_id for b in recent}
        recent_customers = {b.customer_id for b in recent}
        # Every sailing but those sailed 400 days ago; the notices and replies about them are as old.
        session.execute(update(Sailing).where(Sailing.id.not_in(recent_sailings)).values(
            scheduled_departure=long_ago, scheduled_arrival=long_ago + timedelta(hours=2)))
        session.execute(update(Sailing).where(Sailing.id.in_(recent_sailings)).values(
            scheduled_departure=now + timedelta(days=2), scheduled_arrival=now + timedelta(days=2, hours=2)))
        recent_bookings = {b.id for b in session.execute(select(Booking.id).where(
            Booking.sailing_id.in_(recent_sailings)))}
        session.execute(update(Notification).where(Notification.booking_id.not_in(recent_bookings))
                        .values(created_at=long_ago))
        old_booking = next(b for b in bookings if b.sailing_id not in recent_sailings)
        for booking_id, text, at in ((old_booking.id, "call me on +8613912349768", long_ago),
                                     (recent[0].id, "I need a wheelchair place", now)):
            session.add(CustomerResponse(booking_id=booking_id, channel="sms", choice="free_text", raw_text=text,
                                         received_at=at))
        # A customer with an old booking and a coming one is kept whole.
        mixed = next(b for b in bookings if b.sailing_id not in recent_sailings and b.customer_id not in
                     recent_customers and b.id != old_booking.id)
        session.add(Booking(ref="MIXED1", kind="passenger", customer_id=mixed.customer_id, space_class="economy",
                            sailing_id=next(iter(recent_sailings)), currency="CNY"))
        session.add(OptOut(channel="sms", address="+8613800000042", source="sms_stop", created_at=long_ago))
        session.flush()
        kept_customers = set(session.scalars(select(Booking.customer_id).where(
            Booking.sailing_id.in_(recent_sailings))))
    assert recent_customers | {mixed.customer_id} <= kept_customers
    people_before = {p.ref: p for p in everyone(factory)}
    with factory() as session:
        shippers = session.scalar(select(func.count()).select_from(Booking).where(
            Booking.shipper.is_not(None), Booking.sailing_id.not_in(recent_sailings)))
    env = {"NOTIFIER_CONFIG": "", "NOTIFIER_DATABASE_URL": tmp_settings.database_url}
    runner = CliRunner()
    report_before = json.loads(runner.invoke(main, ["report", "--json"], env=env).output)

    asked = runner.invoke(main, ["purge", "--older-than", "365"], env=env, input="n\n")
    assert asked.exit_code == 1 and "Nothing was purged." in asked.output
    done = runner.invoke(main, ["purge", "--older-than", "365", "--yes", "--operator", "dpo"], env=env)

    assert done.exit_code == 0, done.output
    with factory() as session:
        customers = {c.id: c for c in session.scalars(select(Customer))}
        purged = [c for c in customers.values() if c.id not in kept_customers and c.id in
                  set(session.scalars(select(Booking.customer_id)))]
        notices = session.scalars(select(Notification)).all()
        replies = dict(session.execute(select(CustomerResponse.booking_id, CustomerResponse.raw_text)
                                       .where(CustomerResponse.choice == "free_text")).all())
        opt_outs = session.scalar(select(func.count()).select_from(OptOut))
        entry = session.scalar(select(AuditEntry).where(AuditEntry.action == "retention.purged"))
    old_notices = [n for n in notices if n.booking_id not in recent_bookings]
    assert purged and all((c.name, c.phone, c.email) == ("", None, None) for c in purged)
    assert all(customers[c].name == people_before[customers[c].ref].name and
               customers[c].phone == people_before[customers[c].ref].phone for c in kept_customers)
    assert all((n.recipient, n.body_text, n.subject, n.body_html) == ("", "", None, None)
               and n.dedup_key == f"purged:{n.id}" for n in old_notices)
    assert all(n.recipient and n.body_text for n in notices if n.booking_id in recent_bookings)
    assert replies == {old_booking.id: None, recent[0].id: "I need a wheelchair place"}
    assert opt_outs == 1  # a STOP outlives retention
    counts = {"customers": len(purged), "notices": len(old_notices), "replies": 1}
    assert f"Purged: {counts['customers']} customer(s), {shippers} shipper name(s), {counts['notices']} notice(s), " \
           "1 reply text(s), 0 desk note(s)." in done.output
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(Booking).where(
            Booking.shipper.is_not(None), Booking.sailing_id.not_in(recent_sailings))) == 0
    assert (entry.actor, entry.details["customers"], entry.details["notices"], entry.details["replies"],
            entry.details["older_than_days"]) == ("dpo", counts["customers"], counts["notices"], 1, 365)
    assert leaks(list(people_before.values()), {"audit": json.dumps(entry.details)}) == []

    report_after = json.loads(runner.invoke(main, ["report", "--json"], env=env).output)
    report_before.pop("generated_at"), report_after.pop("generated_at")
    assert report_after == report_before
    again = runner.invoke(main, ["purge", "--older-than", "365", "--yes"], env=env)
    assert again.exit_code == 0 and again.output.startswith("Nothing to purge: no personal data older than 365 days")
