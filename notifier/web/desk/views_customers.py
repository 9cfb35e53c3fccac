"""Desk pages: signing in and out, finding a customer, the customer page, and what an agent records on the phone.

A decision taken on the phone goes through notifier.aftercare.responses.record_choice, the very function the
choice page calls (channel "agent"): the hold is used, the booking moves, the confirmation is queued and the
export carries it. Every action is also in the audit log under the agent's name.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Response, redirect, request, session, url_for
from flask_login import login_user, logout_user

from sqlalchemy.orm import Session

from notifier.aftercare.responses import ChoiceRefused, Outcome, keep_ticket, record_choice
from notifier.aftercare.tickets import inbox
from notifier.store import audit
from notifier.store.db import transaction
from notifier.store.models import Booking, Customer, DeskCall
from notifier.web.desk.auth import SignInRefused, sign_in, sign_out
from notifier.web.desk.blueprint import agent, desk, factory, language, now, page_words, render, settings
from notifier.web.desk.customers import bookings_of, find_customers, masked, timeline
from notifier.web.desk.forms import CallForm, ChoiceForm, SignInForm


@desk.get("/signin")
def sign_in_page() -> Response:
    """The sign-in form."""
    return render("signin.html.j2", error=None, next=_safe_next(request.args.get("next")))


@desk.post("/signin")
def sign_in_post() -> Response:
    """Check the agent's name and password; a new session (and session token) on success."""
    form = SignInForm(request.form)
    target = _safe_next(request.form.get("next"))
    if not form.validate():
        return render("signin.html.j2", 400, error="wrong", next=target)
    with factory()() as db:
        try:
            signed_in = sign_in(db, settings(), form.name.data, form.password.data, now())
        except SignInRefused as refused:
            db.commit()  # the failure counts (and is audited) even though the sign-in is refused
            return render("signin.html.j2", 403 if refused.reason == "locked" else 401, error=refused.reason,
                          next=target)
        db.commit()
    lang = session.get("desk_lang")
    session.clear()  # nothing from before the sign-in survives it (session fixation)
    if lang:
        session["desk_lang"] = lang
    login_user(signed_in)
    return redirect(target or url_for("desk.home"), code=303)


@desk.post("/signout")
def sign_out_post() -> Response:
    """End the agent's session here and everywhere."""
    with transaction(factory()) as db:
        sign_out(db, agent().agent_id)
    logout_user()
    session.clear()
    return redirect(url_for("desk.sign_in_page"), code=303)


def _safe_next(target: str | None) -> str:
    # Only a path on this site: never an open redirect to another one.
    parts = urlsplit(target or "")
    return target if target and not parts.scheme and not parts.netloc and target.startswith("/desk") else ""


@desk.get("/")
def home() -> Response:
    """Search, and what is waiting: open tickets and follow-ups."""
    query = request.args.get("q", "").strip()
    with factory()() as db:
        found = [masked(c) for c in find_customers(db, query)] if query else []
        waiting = len(inbox(db))
        if query:
            audit.record(db, agent().name, "desk.searched", "customer", None, results=len(found))
            db.commit()
    return render("home.html.j2", query=query, found=found, searched=bool(query), waiting=waiting)


@desk.get("/customers/<int:customer_id>")
def customer_page(customer_id: int) -> Response:
    """The customer, their bookings with any open choice, and one timeline of everything."""
    return _customer_view(customer_id)


@desk.post("/customers/<int:customer_id>/reveal")
def reveal(customer_id: int) -> Response:
    """Show the full phone and email to this agent, once, and record that they were shown."""
    with transaction(factory()) as db:
        customer = db.get(Customer, customer_id)
        if customer is None:
            return render("problem.html.j2", 404, message=page_words()["none_found"])
        audit.record(db, agent().name, "desk.contact_revealed", "customer", customer.id, customer_ref=customer.ref)
        contacts = {"name": customer.name, "phone": customer.phone or "", "email": customer.email or ""}
    return _customer_view(customer_id, revealed=contacts)


def _customer_view(customer_id: int, revealed: dict | None = None, message: str = "", status: int = 200
                   ) -> Response:
    lang = language()
    with factory()() as db:
        customer = db.get(Customer, customer_id)
        if customer is None:
            return render("problem.html.j2", 404, message=page_words()["none_found"])
        shown = masked(customer) | {"language": customer.language, "key_account": customer.key_account}
        context = {"customer": shown, "bookings": bookings_of(db, customer.id, lang),
                   "events": timeline(db, customer.id), "tickets": inbox(db, customer_id=customer.id)}
    return render("customer.html.j2", status, revealed=revealed, message=message, **context)


@desk.post("/bookings/<int:booking_id>/choice")
def record_phone_choice(booking_id: int) -> Response:
    """Record the option the customer chose on the phone, through the choice page's own path."""
    form = ChoiceForm(request.form)
    with factory()() as db:
        booking = db.get(Booking, booking_id)
        if booking is None:
            return render("problem.html.j2", 404, message=page_words()["none_found"])
        customer_id = booking.customer_id
    if not form.validate():
        return _customer_view(customer_id, message=page_words()["refused"], status=400)
    try:
        with transaction(factory()) as db:
            outcome = _decided(db, booking_id, form.disruption_id.data, form.option.data.strip())
            audit.record(db, agent().name, "desk.choice_recorded", "booking", booking_id, option=outcome.option_key,
                         choice=outcome.choice, disruption=outcome.disruption_id)
    except ChoiceRefused as refused:
        return _customer_view(customer_id, message=f"{page_words()['refused']}: {refused.reason}", status=409)
    return redirect(url_for("desk.customer_page", customer_id=customer_id, done="choice"), code=303)


KEEP = "keep"  # what an agent types for "the customer keeps the ticket they have"


def _decided(db: Session, booking_id: int, disruption_id: int, option: str) -> Outcome:
    # The choice page's own paths: an offer's key through record_choice, "keep" through keep_ticket.
    if option.lower() != KEEP:
        return record_choice(db, settings(), booking_id, disruption_id, option, "agent", now=now())
    outcome = keep_ticket(db, settings(), booking_id, disruption_id, "agent", now())
    if outcome is None:
        raise ChoiceRefused("already_chosen", "this booking's decision was already taken", ())
    return outcome


@desk.post("/customers/<int:customer_id>/calls")
def log_call(customer_id: int) -> Response:
    """Keep a call's outcome and notes on the customer's timeline."""
    form = CallForm(request.form)
    if not form.validate():
        return _customer_view(customer_id, message=page_words()["refused"], status=400)
    with transaction(factory()) as db:
        customer = db.get(Customer, customer_id)
        booking = db.get(Booking, form.booking_id.data) if form.booking_id.data else None
        if customer is None or (booking is not None and booking.customer_id != customer_id):
            return render("problem.html.j2", 404, message=page_words()["none_found"])
        call = DeskCall(customer_id=customer_id, booking_id=booking.id if booking else None, agent=agent().name,
                        outcome=form.outcome.data, note=(form.note.data or "").strip(), at=now())
        db.add(call)
        db.flush()
        audit.record(db, agent().name, "desk.call_logged", "customer", customer_id, call=call.id,
                     outcome=call.outcome)
    return redirect(url_for("desk.customer_page", customer_id=customer_id, done="call"), code=303)
