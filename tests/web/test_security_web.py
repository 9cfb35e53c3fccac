"""The choice page under attack: forged, truncated, swapped, expired and replayed links; cross-site and stale forms;
floods of POSTs; oversized bodies; markup smuggled into every field the page shows; and the headers that keep a
personal page out of caches, frames and other sites. Every refusal must leave the database as it was."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from itsdangerous import TimestampSigner
from sqlalchemy import select, update

from notifier.planning import links
from notifier.store.db import transaction
from notifier.store.models import Booking, Customer, Disruption, Notification, Offer, Port, Sailing
from notifier.web.throttle import Buckets, client_address, trusted_networks
from notifier.web.app import create_app
from tests.aftercare.test_responses import NOW, db_state, factory, offers_of, planned_template, sms_notice  # noqa: F401

SCRIPT = "<script>alert(1)</script>"
ATTACKER = "203.0.113.66"


class Clock:
    """The app's idea of now, moved by the test."""

    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock(NOW)


@pytest.fixture
def settings(tmp_settings):
    return replace(tmp_settings, twilio_auth_token="test-auth-token", choice_posts_per_minute_per_link=100,
                   choice_posts_per_minute_per_address=100)


@pytest.fixture
def client(factory, settings, clock):  # noqa: F811 - the planned typhoon from test_responses
    return create_app(settings, factory, clock=clock).test_client()


@pytest.fixture
def strict(factory, settings, clock):  # noqa: F811
    """The app with tight flood limits: 4 POSTs a minute per link, 8 per client address."""
    return create_app(replace(settings, choice_posts_per_minute_per_link=4, choice_posts_per_minute_per_address=8),
                      factory, clock=clock).test_client()


def token_of(notice: Notification) -> str:
    return urlsplit(re.search(r"https://ferry\.example/c/\S+", notice.body_text).group(0)).path.removeprefix("/c/")


def form_token(client, token: str, **environ) -> str:
    page = client.get(f"/c/{token}", environ_base=environ).get_data(as_text=True)
    return re.search(r'name="form_token" value="([^"]+)"', page).group(1)


def choose(client, token: str, option: str = "1", form: str | None = None, address: str = "198.51.100.7",
           **headers: str):
    form = form_token(client, token) if form is None else form
    return client.post(f"/c/{token}", data={"form_token": form, "option": option},
                       environ_base={"REMOTE_ADDR": address}, headers=headers)


def two_notices(factory):  # noqa: F811
    """SMS notices of two different bookings, both with a held first alternative."""
    first = sms_notice(factory, "en")
    with factory() as session:
        second = session.scalars(select(Notification).join(Offer, (Offer.booking_id == Notification.booking_id)
                                                           & (Offer.disruption_id == Notification.disruption_id))
                                 .where(Notification.channel == "sms", Notification.purpose == "notice",
                                        Notification.booking_id != first.booking_id, Offer.option_key == "1",
                                        Offer.status == "held").order_by(Notification.id)).first()
    return first, second


# --- links -------------------------------------------------------------------------------------------------------

def test_forged_and_truncated_links_show_the_invalid_page_and_change_nothing(client, factory, settings):
    notice = sms_notice(factory, "en")
    token = token_of(notice)
    link = links.read_token(settings.secret_key, token, now=NOW)
    form = form_token(client, token)
    forged = [links.make_token("another-secret", link.booking_id, link.disruption_id, link.deadline),
              token.split(".")[0] + ".AAAAAAAAAAAAAAAAAAAAAA", token.split(".")[0], "." + token.split(".")[1],
              token + "A", token.upper(), "x" * 5000, "%00", "..", "a.b.c"]
    forged += [token[:cut] for cut in range(1, len(token))]  # every truncation, as a mail client might cut it
    before = db_state(factory)

    for number, fake in enumerate(forged):
        shown = client.get(f"/c/{fake}")
        posted = client.post(f"/c/{fake}", data={"form_token": form, "option": "1"},
                             environ_base={"REMOTE_ADDR": f"198.18.0.{number}"})
        for response in (shown, posted):
            assert response.status_code == 404, fake
            assert "This link is not valid" in response.get_data(as_text=True)

    assert db_state(factory) == before


def test_a_link_for_booking_a_cannot_be_turned_into_one_for_booking_b(client, factory, settings):
    first, second = two_notices(factory)
    token_a, token_b = token_of(first), token_of(second)
    payload_a, signature_a = token_a.split(".")
    payload_b = token_b.split(".")[0]
    before = db_state(factory)

    # B's payload under A's signature, and A's payload with B's booking id written in.
    swapped = f"{payload_b}.{signature_a}"
    rewritten = "-".join([links._b36(second.booking_id), *payload_a.split("-")[1:]]) + "." + signature_a
    for fake in (swapped, rewritten):
        assert client.get(f"/c/{fake}").status_code == 404
        assert choose(client, fake, form=form_token(client, token_a)).status_code == 404
    # A's page's form token does not work on B's link either.
    assert choose(client, token_b, form=form_token(client, token_a)).status_code == 400
    assert db_state(factory) == before

    # A's own choice moves A only.
    b_before = booking_state(factory, second.booking_id)
    assert choose(client, token_a).status_code == 303
    assert booking_state(factory, second.booking_id) == b_before
    assert booking_state(factory, first.booking_id) != booking_state(factory, second.booking_id)


def booking_state(factory, booking_id: int) -> tuple:  # noqa: F811
    with factory() as session:
        booking = session.get(Booking, booking_id)
        return (booking.status, booking.sailing_id, booking.refund_amount,
                sorted((o.option_key, o.status) for o in offers_of(factory, booking_id).values()))


def test_a_link_works_until_its_deadline_and_not_a_second_after(client, factory, clock):
    notice = sms_notice(factory, "en")
    token = token_of(notice)
    deadline = offers_of(factory, notice.booking_id)["1"].deadline
    form = form_token(client, token)

    clock.now = deadline
    assert client.get(f"/c/{token}").status_code == 200
    clock.now = deadline + timedelta(seconds=1)
    before = db_state(factory)
    assert client.get(f"/c/{token}").status_code == 410
    assert choose(client, token, form=form).status_code == 410
    assert db_state(factory) == before


def test_a_replayed_choice_is_refused_even_from_elsewhere_and_changes_nothing(client, factory):
    notice = sms_notice(factory, "en")
    token = token_of(notice)
    form = form_token(client, token)
    assert choose(client, token, form=form).status_code == 303
    after_first = db_state(factory)

    replays = [choose(client, token, form=form), choose(client, token, "R", form=form),
               choose(client, token, form=form, address="192.0.2.200")]

    assert [r.status_code for r in replays] == [409, 409, 409]
    assert db_state(factory) == after_first


# --- cross-site forms --------------------------------------------------------------------------------------------

def test_a_choice_without_this_pages_own_fresh_form_token_is_refused(client, factory, settings, monkeypatch):
    first, second = two_notices(factory)
    token = token_of(first)
    good = form_token(client, token)
    # A form token signed a day and a minute ago: a page left open, or one an attacker fetched long before.
    signer = TimestampSigner(settings.secret_key, salt="notifier.choice-form")
    monkeypatch.setattr(signer, "get_timestamp", lambda: int(time.time()) - 24 * 3600 - 60)
    stale = signer.sign(token).decode()[len(token) + 1:]
    monkeypatch.undo()
    before = db_state(factory)

    refused = [client.post(f"/c/{token}", data={"option": "1"}),
               choose(client, token, form=""),
               choose(client, token, form=good[:-6] + ("A" if good[-6] != "A" else "B") + good[-5:]),
               choose(client, token, form=form_token(client, token_of(second))),
               choose(client, token, form=stale),
               choose(client, token, form=good, Origin="https://evil.example"),
               choose(client, token, form=good, Origin="null")]

    assert [r.status_code for r in refused] == [400] * len(refused)
    assert all("Please choose again" in r.get_data(as_text=True) for r in refused)
    assert db_state(factory) == before
    # The same form from our own public origin goes through.
    assert choose(client, token, form=good, Origin="https://ferry.example").status_code == 303


# --- floods --------------------------------------------------------------------------------------------------------

def test_a_flood_of_posts_on_one_link_gets_429_with_retry_after(strict, factory):
    client = strict
    notice = sms_notice(factory, "en")
    token = token_of(notice)
    form = form_token(client, token)
    before = db_state(factory)

    answers = [choose(client, token, option="9", form=form) for _ in range(7)]

    assert [r.status_code for r in answers] == [400] * 4 + [429] * 3  # 4 a minute per link in this test
    refused = answers[-1]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "Too many tries" in refused.get_data(as_text=True) and "操作过于频繁" in refused.get_data(as_text=True)
    assert refused.headers["Cache-Control"] == "no-store"
    # The genuine choice is refused too while the link is throttled: nothing was recorded by the flood.
    assert choose(client, token, form=form).status_code == 429
    assert db_state(factory) == before
    # Another customer's link from another address is not affected.
    _, other = two_notices(factory)
    assert choose(client, token_of(other), address="192.0.2.10").status_code == 303


def test_a_flood_from_one_address_over_many_links_gets_429(strict, factory):
    client = strict
    notice = sms_notice(factory, "en")
    token = token_of(notice)
    before = db_state(factory)

    answers = [client.post(f"/c/{token[:-2]}{i:02d}", data={"option": "1"}, environ_base={"REMOTE_ADDR": ATTACKER})
               for i in range(12)]

    assert [r.status_code for r in answers] == [404] * 8 + [429] * 4  # 8 a minute per address in this test
    # A forged X-Forwarded-For from a peer that is no trusted proxy changes nothing.
    dodged = client.post(f"/c/{token}", data={"option": "1"}, environ_base={"REMOTE_ADDR": ATTACKER},
                         headers={"X-Forwarded-For": "192.0.2.99"})
    assert dodged.status_code == 429
    assert db_state(factory) == before


def test_behind_a_trusted_proxy_the_client_address_is_taken_from_x_forwarded_for(factory, settings, clock):
    app = create_app(replace(settings, trusted_proxies=("10.0.0.0/8",), choice_posts_per_minute_per_link=4,
                             choice_posts_per_minute_per_address=8), factory, clock=clock)
    client = app.test_client()
    token = token_of(sms_notice(factory, "en"))

    def post(forwarded_for: str):
        return client.post(f"/c/{token[:-3]}x{forwarded_for[-2:]}", data={"option": "1"},
                           environ_base={"REMOTE_ADDR": "10.1.2.3"},
                           headers={"X-Forwarded-For": forwarded_for})

    flood = [post(f"{ATTACKER}, 10.9.9.{i}") for i in range(10)]
    assert [r.status_code for r in flood] == [404] * 8 + [429] * 2
    # Other customers behind the same proxy are still served.
    assert post("198.51.100.23").status_code == 404


def test_token_buckets_refill_at_their_rate():
    now = [0.0]
    buckets = Buckets(6, clock=lambda: now[0])  # 6 a minute: one every 10 s
    assert [buckets.take("k") for _ in range(6)] == [0.0] * 6
    assert buckets.take("k") == pytest.approx(10.0)
    now[0] = 9.9
    assert buckets.take("k") > 0
    now[0] = 20.0
    assert buckets.take("k") == 0.0
    assert buckets.take("other") == 0.0


def test_x_forwarded_for_is_believed_only_from_trusted_proxies():
    trusted = trusted_networks(["10.0.0.0/8", "::1"])
    assert client_address("203.0.113.5", "1.2.3.4", trusted) == "203.0.113.5"
    assert client_address("10.0.0.1", "1.2.3.4", trusted) == "1.2.3.4"
    assert client_address("10.0.0.1", "6.6.6.6, 1.2.3.4, 10.0.0.7", trusted) == "1.2.3.4"
    assert client_address("::1", "", trusted) == "::1"


# --- oversized bodies ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/c/{token}", "/twilio/status", "/twilio/inbound"])
def test_an_oversized_body_is_refused_with_413_before_it_is_read(client, factory, path):
    token = token_of(sms_notice(factory, "en"))
    before = db_state(factory)

    response = client.post(path.format(token=token), data={"option": "1", "Body": "x" * 200_000},
                           headers={"X-Twilio-Signature": "c2lnbmF0dXJl"})

    assert response.status_code == 413
    assert response.headers["Cache-Control"] == "no-store"
    assert db_state(factory) == before


# --- markup in every field shown ------------------------------------------------------------------------------------

def test_markup_in_every_field_the_pages_show_is_escaped(factory, settings, clock):
    notice = sms_notice(factory, "en")
    offer = offers_of(factory, notice.booking_id)["1"]
    hostile = {f"field{i}": f'"><img src=x onerror=alert({i})>{SCRIPT}' for i in range(8)}
    with transaction(factory) as session:
        booking = session.get(Booking, notice.booking_id)
        disruption = session.get(Disruption, notice.disruption_id)
        sailing = session.get(Sailing, disruption.sailing_id)
        session.execute(update(Booking).where(Booking.id == booking.id).values(ref="B<svg/onload=1>"))
        session.execute(update(Customer).where(Customer.id == booking.customer_id).values(name=hostile["field0"]))
        session.execute(update(Sailing).where(Sailing.id == sailing.id).values(code="S<b>1</b>\"'"))
        session.execute(update(Sailing).where(Sailing.id == offer.sailing_id).values(code="S<b>2</b>\"'"))
        session.execute(update(Port).where(Port.id.in_([sailing.origin_port_id, sailing.destination_port_id,
                                                        offer.sailing.destination_port_id]))
                        .values(name=hostile["field1"], name_zh=hostile["field2"]))
        session.execute(update(Disruption).where(Disruption.id == disruption.id)
                        .values(cause=hostile["field3"][:64], cause_text=hostile["field4"]))
    app = create_app(replace(settings, company_name=hostile["field5"], company_name_zh=hostile["field6"],
                             helpline=hostile["field7"]), factory, clock=clock)
    client = app.test_client()
    token = token_of(notice)

    pages = [client.get(f"/c/{token}"), client.get(f"/c/{token}?lang=zh-CN"),
             client.get(f"/c/{token}?lang=%22%3E%3Cscript%3Ealert(1)%3C/script%3E"),
             client.get(f"/c/{SCRIPT}"), client.get(f"/c/{token}x")]
    pages.append(choose(client, token, form=form_token(client, token)))
    pages += [client.get(f"/c/{token}"), client.get(f"/c/{token}?lang=zh-CN"), choose(client, token, "R", form="x")]

    assert [p.status_code for p in pages] == [200, 200, 200, 404, 404, 303, 200, 200, 400]
    for page in pages:
        html = page.get_data(as_text=True)
        for raw in ("<script", "<img", "<svg", "<b>", '"><img'):
            assert raw not in html, (page.request.path, raw)
    shown = pages[0].get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown and "B&lt;svg/onload=1&gt;" in shown
    # The customer's name is not on the page at all (a forwarded link shows nobody's name).
    assert "alert(0)" not in "".join(p.get_data(as_text=True) for p in pages)


# --- headers on every page -----------------------------------------------------------------------------------------

def test_every_answer_carries_the_security_headers(client, factory, clock):
    notice = sms_notice(factory, "en")
    token = token_of(notice)
    form = form_token(client, token)
    answers = {"choice page": client.get(f"/c/{token}"),
               "invalid link": client.get("/c/forged.token"),
               "wrong method": client.put(f"/c/{token}"),
               "no such page": client.get("/admin"),
               "bad form": choose(client, token, form="nope"),
               "choice made": choose(client, token, form=form),
               "already chosen": choose(client, token, form=form),
               "done page": client.get(f"/c/{token}"),
               "unsigned webhook": client.post("/twilio/status", data={"MessageSid": "SM1"}),
               "unsubscribe page": client.get("/unsubscribe/forged"),
               "too big": client.post(f"/c/{token}", data={"x": "y" * 100_000})}
    clock.now = offers_of(factory, notice.booking_id)["1"].deadline + timedelta(days=1)
    answers["expired link"] = client.get(f"/c/{token}")

    for name, response in answers.items():
        csp = response.headers.get("Content-Security-Policy", "")
        assert "default-src 'none'" in csp, name
        assert "frame-ancestors 'none'" in csp and "base-uri 'none'" in csp and "form-action 'self'" in csp, name
        assert not re.search(r"https?:|\*|data:|unsafe-inline|unsafe-eval", csp), (name, csp)
        assert response.headers["Cache-Control"] == "no-store", name
        assert response.headers["X-Content-Type-Options"] == "nosniff", name
        assert response.headers["X-Frame-Options"] == "DENY", name
        assert response.headers["Referrer-Policy"] in ("same-origin", "no-referrer"), name
    statuses = {name: r.status_code for name, r in answers.items()}
    assert statuses == {"choice page": 200, "invalid link": 404, "wrong method": 404, "no such page": 404,
                        "bad form": 400, "choice made": 303, "already chosen": 409, "done page": 200,
                        "unsigned webhook": 403, "unsubscribe page": 404, "too big": 413, "expired link": 410}


def test_a_database_failure_gives_a_bare_500_without_details(settings, clock):
    class Broken:
        def __call__(self):
            raise RuntimeError("database at 10.0.0.5 said no for +8613912345678")

    app = create_app(settings, Broken(), clock=clock)
    token = links.make_token(settings.secret_key, 1, 1, NOW + timedelta(days=1))
    response = app.test_client().get(f"/c/{token}")

    assert response.status_code == 500
    body = response.get_data(as_text=True)
    assert "+8613912345678" not in body and "10.0.0.5" not in body and "Traceback" not in body
    assert response.headers["Cache-Control"] == "no-store" and "default-src 'none'" in \
        response.headers["Content-Security-Policy"]
