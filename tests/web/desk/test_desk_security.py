"""The desk is closed to anyone not signed in, refuses forged forms, cannot be entered with a planted or old
session, locks one agent out after repeated failures without touching the others, keeps four eyes on
broadcasts, records every contact reveal, and keeps personal data out of the logs."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from notifier.store.db import transaction
from notifier.store.models import Agent, AuditEntry, Broadcast, Customer, DeskCall
from notifier.web.app import create_app
from notifier.web.desk.auth import add_agent
from tests.web.desk.conftest import PASSWORD, csrf_of, post, sign_in

PAGES = ("/desk/", "/desk/?q=T", "/desk/customers/1", "/desk/tickets", "/desk/tickets/1", "/desk/followups",
         "/desk/stats", "/desk/stats.csv", "/desk/broadcasts")
FORMS = ("/desk/customers/1/reveal", "/desk/customers/1/calls", "/desk/bookings/1/choice", "/desk/tickets/1/reply",
         "/desk/followups/1/take", "/desk/broadcasts/1/approve", "/desk/signout")


def a_customer(factory) -> Customer:
    with factory() as session:
        return session.scalars(select(Customer).where(Customer.phone.is_not(None), Customer.email.is_not(None))
                               .order_by(Customer.id)).first()


def audit_rows(factory, action: str) -> list[AuditEntry]:
    with factory() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action == action)))


@pytest.mark.parametrize("path", PAGES)
def test_no_page_without_signing_in(desk_app, path):
    response = desk_app.test_client().get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/desk/signin")


@pytest.mark.parametrize("path", FORMS)
def test_no_form_without_signing_in_even_with_a_valid_token(desk_app, path):
    client = desk_app.test_client()
    token = csrf_of(client.get("/desk/signin").get_data(as_text=True))
    assert client.post(path, data={"csrf_token": token}).status_code == 401


@pytest.mark.parametrize("token", [None, "", "forged-token", "IjAwMDAi.aaaa.bbbb"])
def test_a_form_without_its_token_or_with_a_wrong_one_is_refused_and_changes_nothing(desk_app, factory, token):
    client = desk_app.test_client()
    sign_in(client)
    customer = a_customer(factory)
    data = {"outcome": "reached", "note": "called back"} | ({} if token is None else {"csrf_token": token})
    assert client.post(f"/desk/customers/{customer.id}/calls", data=data).status_code == 400
    assert client.post(f"/desk/customers/{customer.id}/reveal", data=data).status_code == 400
    with factory() as session:
        assert session.scalars(select(DeskCall)).all() == []
    assert audit_rows(factory, "desk.contact_revealed") == []


def test_the_sign_in_form_itself_needs_its_token(desk_app, factory):
    client = desk_app.test_client()
    response = client.post("/desk/signin", data={"name": "li.na", "password": PASSWORD})
    assert response.status_code == 400
    assert client.get("/desk/").status_code == 302
    assert audit_rows(factory, "desk.signed_in") == []


def test_a_session_from_before_the_sign_in_does_not_open_the_desk(desk_app):
    """Session fixation: an attacker's cookie, planted before the agent signs in, is not the signed-in one."""
    attacker = desk_app.test_client()
    attacker.get("/desk/signin")
    planted = attacker.get_cookie("notifier_desk").value
    victim = desk_app.test_client()
    victim.set_cookie("notifier_desk", planted)
    assert sign_in(victim).status_code == 303
    assert victim.get_cookie("notifier_desk").value != planted
    assert victim.get("/desk/").status_code == 200
    assert attacker.get("/desk/").status_code == 302  # the planted cookie is still not signed in


def test_an_old_session_cookie_no_longer_opens_the_desk_after_signing_in_again_or_out(desk_app):
    first = desk_app.test_client()
    sign_in(first)
    old = first.get_cookie("notifier_desk").value
    second = desk_app.test_client()
    sign_in(second)  # the same agent signs in elsewhere: a new session token
    replay = desk_app.test_client()
    replay.set_cookie("notifier_desk", old)
    assert replay.get("/desk/").status_code == 302
    current = second.get_cookie("notifier_desk").value
    assert post(second, "/desk/signout").status_code == 303
    after = desk_app.test_client()
    after.set_cookie("notifier_desk", current)
    assert after.get("/desk/").status_code == 302


def test_repeated_failures_lock_that_agent_only_and_the_lock_lifts_with_time(desk_app, factory):
    client = desk_app.test_client()
    for _ in range(2):
        assert sign_in(client, "li.na", "wrong password").status_code == 401
    third = sign_in(client, "li.na", "wrong password")
    assert third.status_code == 403 and "locked" in third.get_data(as_text=True)
    assert sign_in(client, "li.na", PASSWORD).status_code == 403  # the right password does not help now
    assert sign_in(desk_app.test_client(), "wang.wei", PASSWORD).status_code == 303  # another agent is not locked
    assert len(audit_rows(factory, "desk.locked_out")) == 1
    desk_app.config["TEST_CLOCK"].now += timedelta(minutes=16)
    assert sign_in(client, "li.na", PASSWORD).status_code == 303


def test_a_wrong_name_and_a_wrong_password_read_the_same(desk_app):
    unknown = sign_in(desk_app.test_client(), "nobody", PASSWORD)
    wrong = sign_in(desk_app.test_client(), "li.na", "not it at all")
    assert unknown.status_code == wrong.status_code == 401
    assert "Wrong name or password." in unknown.get_data(as_text=True)
    assert "Wrong name or password." in wrong.get_data(as_text=True)


def test_a_disabled_agent_is_signed_out_at_once(desk_app, factory):
    client = desk_app.test_client()
    sign_in(client)
    with transaction(factory) as session:
        session.execute(update(Agent).where(Agent.name == "li.na").values(disabled=True))
    assert client.get("/desk/").status_code == 302
    assert sign_in(desk_app.test_client()).status_code == 401


def test_an_agent_cannot_approve_their_own_broadcast_and_a_plain_agent_none(desk_app, factory):
    with transaction(factory) as session:
        add_agent(session, "duty.zhao", "duty", PASSWORD, "test")
        broadcast = session.scalars(select(Broadcast).order_by(Broadcast.id)).first()
        broadcast.status, broadcast.created_by, broadcast.needs_approval = "awaiting_approval", "duty.chen", True
        broadcast_id = broadcast.id
    agent = desk_app.test_client()
    sign_in(agent, "li.na")
    assert agent.get("/desk/broadcasts").status_code == 403
    assert post(agent, f"/desk/broadcasts/{broadcast_id}/approve").status_code == 403
    creator = desk_app.test_client()
    sign_in(creator, "duty.chen")
    refused = post(creator, f"/desk/broadcasts/{broadcast_id}/approve", page="/desk/broadcasts")
    assert refused.status_code == 409 and "a different operator must approve it" in refused.get_data(as_text=True)
    with factory() as session:
        assert session.get(Broadcast, broadcast_id).status == "awaiting_approval"
    other = desk_app.test_client()
    sign_in(other, "duty.zhao")
    assert post(other, f"/desk/broadcasts/{broadcast_id}/approve", page="/desk/broadcasts").status_code == 303
    with factory() as session:
        assert session.get(Broadcast, broadcast_id).approved_by == "duty.zhao"


def test_a_revealed_contact_is_in_the_audit_under_the_agents_name_and_the_audit_holds_no_contact(desk_app, factory):
    client = desk_app.test_client()
    sign_in(client)
    customer = a_customer(factory)
    page = client.get(f"/desk/customers/{customer.id}").get_data(as_text=True)
    assert customer.phone not in page and customer.email not in page  # masked until asked
    shown = post(client, f"/desk/customers/{customer.id}/reveal", page=f"/desk/customers/{customer.id}")
    assert customer.phone in shown.get_data(as_text=True) and customer.email in shown.get_data(as_text=True)
    [entry] = audit_rows(factory, "desk.contact_revealed")
    assert (entry.actor, entry.subject_type, entry.subject_id) == ("li.na", "customer", str(customer.id))
    with factory() as session:
        everything = " ".join(str(e.details) for e in session.scalars(select(AuditEntry)))
    assert customer.phone not in everything and customer.email not in everything


def test_no_personal_data_or_password_in_the_logs(desk_app, factory, caplog):
    customer = a_customer(factory)
    caplog.set_level(logging.DEBUG)
    client = desk_app.test_client()
    sign_in(client, "li.na", "wrong password here")
    sign_in(client)
    client.get(f"/desk/?q={customer.phone}")
    client.get(f"/desk/?q={customer.email}")
    post(client, f"/desk/customers/{customer.id}/reveal")
    post(client, f"/desk/customers/{customer.id}/calls", {"outcome": "reached", "note": f"call {customer.phone}"})
    logged = caplog.text + " ".join(str(r.args) for r in caplog.records)
    for secret in (customer.phone, customer.email, customer.name, PASSWORD, "wrong password here"):
        assert secret not in logged


def test_session_cookies_are_secure_httponly_and_lax_by_default(factory, tmp_settings):
    app = create_app(replace(tmp_settings), factory)
    client = app.test_client()
    header = client.get("/desk/signin", base_url="https://desk.example").headers.get("Set-Cookie", "")
    assert "notifier_desk=" in header
    assert "Secure" in header and "HttpOnly" in header and "SameSite=Lax" in header


def test_the_sign_in_page_never_sends_the_agent_off_site(desk_app):
    client = desk_app.test_client()
    token = csrf_of(client.get("/desk/signin").get_data(as_text=True))
    response = client.post("/desk/signin", data={"csrf_token": token, "name": "li.na", "password": PASSWORD,
                                                 "next": "https://evil.example/desk"})
    assert response.headers["Location"] == "/desk/"


def test_a_trusted_proxy_may_name_the_agent_and_nobody_else_may(factory, desk_settings):
    with transaction(factory) as session:
        add_agent(session, "li.na", "agent", PASSWORD, "test")
    app = create_app(replace(desk_settings, desk_identity_header="X-Remote-User", trusted_proxies=("10.0.0.1",)),
                     factory)
    proxied = app.test_client()
    via_proxy = {"REMOTE_ADDR": "10.0.0.1"}
    assert proxied.get("/desk/", headers={"X-Remote-User": "li.na"}, environ_base=via_proxy).status_code == 200
    assert proxied.get("/desk/tickets", environ_base=via_proxy).status_code == 200  # the session carries on
    assert app.test_client().get("/desk/", headers={"X-Remote-User": "nobody"},
                                 environ_base=via_proxy).status_code == 302
    forged = app.test_client().get("/desk/", headers={"X-Remote-User": "li.na"},
                                   environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert forged.status_code == 302  # not from the proxy: the header means nothing
    [entry] = audit_rows(factory, "desk.signed_in")
    assert (entry.actor, entry.details) == ("li.na", {"via": "proxy"})
