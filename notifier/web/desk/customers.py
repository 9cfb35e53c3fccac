"""Finding a customer and reading everything about them: bookings, open choices and one timeline.

A search takes what a caller reads out: a booking reference, a phone number in any format ("+852 9123 4567",
"91234567"), an email address or part of a name. Contacts are masked everywhere until an agent asks to see them
(that reveal is audited by the view).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from notifier.aftercare.responses import CHOOSABLE, current_offers, decision_of, offer_deadline, sailing_view
from notifier.aftercare.tickets import customers_by_phone
from notifier.planning.audience import normalise_phone
from notifier.privacy import mask_email, mask_name, mask_phone, redact
from notifier.store.models import (Booking, Customer, CustomerResponse, DeskCall, Disruption, FollowUp, Notification,
                                   Ticket)
from notifier.store.status import ACTIVE, CONFIRMED, HELD

SEARCH_LIMIT = 20
MIN_DIGITS = 6


@dataclass(frozen=True)
class Event:
    """One line of a customer's timeline."""

    at: datetime
    kind: str  # notice | reply | choice | call | ticket | follow-up
    booking_ref: str
    text: str


def find_customers(session: Session, text: str) -> list[Customer]:
    """Customers matching a booking reference, phone, email or name; at most SEARCH_LIMIT."""
    text = (text or "").strip()
    if not text:
        return []
    by_ref = select(Booking.customer_id).where(Booking.ref == text.upper().replace(" ", ""))
    clauses = [Customer.id.in_(by_ref), Customer.ref == text.upper()]
    digits = re.sub(r"\D", "", text)
    if "@" in text:
        clauses.append(func.lower(Customer.email) == text.lower())
    elif len(digits) >= MIN_DIGITS and not re.search(r"[A-Za-z]", text):
        number = normalise_phone(text) or normalise_phone("+" + digits)
        if number:
            clauses.append(Customer.id.in_([c.id for c in customers_by_phone(session, number)]))
        # A number without its country code ("9786 3084"): its digits in order, however the phone was written.
        clauses.append(Customer.phone.like("%" + "%".join(digits)))
    elif len(text) >= 2:
        clauses.append(Customer.name.ilike(f"%{text}%"))
    return list(session.scalars(select(Customer).where(or_(*clauses)).order_by(Customer.id).limit(SEARCH_LIMIT)))


def masked(customer: Customer) -> dict[str, str]:
    """A customer as a list shows them: name and contacts masked."""
    return {"id": str(customer.id), "ref": customer.ref, "name": mask_name(customer.name),
            "phone": mask_phone(customer.phone), "email": mask_email(customer.email)}


def bookings_of(session: Session, customer_id: int, lang: str) -> list[dict]:
    """The customer's bookings, newest first, each with its open choice (offers an agent can record)."""
    rows = []
    for booking in session.scalars(select(Booking).where(Booking.customer_id == customer_id)
                                   .order_by(Booking.id.desc())):
        rows.append({"id": booking.id, "ref": booking.ref, "status": booking.status, "kind": booking.kind,
                     "sailing": sailing_view(session, booking.sailing_id, lang),
                     "choice": open_choice(session, booking, lang)})
    return rows


def open_choice(session: Session, booking: Booking, lang: str) -> dict | None:
    """The disruption on the booking's sailing still waiting for the customer's decision, with its options."""
    disruption = session.scalar(select(Disruption).where(Disruption.sailing_id == booking.sailing_id,
                                                         Disruption.status == ACTIVE)
                                .order_by(Disruption.id.desc()).limit(1))
    if disruption is None or booking.status != CONFIRMED or decision_of(session, booking.id, disruption.id):
        return None
    offers = [o for o in current_offers(session, booking.id, disruption.id) if o.kind in CHOOSABLE]
    if not offers:
        return None
    options = [{"key": o.option_key, "kind": o.kind, "held": o.status == HELD,
                "sailing": sailing_view(session, o.sailing_id, lang) if o.sailing_id else None,
                "amount": f"{o.amount} {o.currency}" if o.kind == "refund" else ""} for o in offers]
    deadline = offer_deadline(offers)
    return {"disruption_id": disruption.id, "kind": disruption.kind, "options": options,
            "deadline": deadline}


def timeline(session: Session, customer_id: int) -> list[Event]:
    """Everything about the customer in order: notices and their delivery, replies, choices, calls, tickets,
    follow-ups. The customer's own words are shown with any phone number or email address in them hidden."""
    refs = dict(session.execute(select(Booking.id, Booking.ref).where(Booking.customer_id == customer_id)).all())
    events = [*_notices(session, customer_id, refs), *_responses(session, refs),
              *(Event(c.at, "call", refs.get(c.booking_id, ""), f"{c.agent}: {c.outcome}. {redact(c.note)}")
                for c in session.scalars(select(DeskCall).where(DeskCall.customer_id == customer_id))),
              *(Event(t.created_at, "ticket", refs.get(t.booking_id, ""),
                      f"#{t.id} {t.category} ({t.status}): {redact(t.body)[:200]}")
                for t in session.scalars(select(Ticket).where(Ticket.customer_id == customer_id))),
              *(Event(f.created_at, "follow-up", refs.get(f.booking_id, ""),
                      f"#{f.id} {f.reason} ({f.status}){': ' + f.outcome if f.outcome else ''}")
                for f in session.scalars(select(FollowUp).where(FollowUp.booking_id.in_(list(refs)))))]
    return sorted(events, key=lambda e: e.at)


def _notices(session: Session, customer_id: int, refs: dict[int, str]) -> list[Event]:
    notices = session.scalars(select(Notification).where(or_(Notification.customer_id == customer_id,
                                                             Notification.booking_id.in_(list(refs)))))
    return [Event(n.sent_at or n.created_at, "notice", refs.get(n.booking_id, ""),
                  f"{n.purpose} · {n.channel} · {n.status}{' (' + n.error_code + ')' if n.error_code else ''}")
            for n in notices]


def _responses(session: Session, refs: dict[int, str]) -> list[Event]:
    responses = session.scalars(select(CustomerResponse).where(CustomerResponse.booking_id.in_(list(refs))))
    return [Event(r.received_at, "choice" if r.decision_key else "reply", refs.get(r.booking_id, ""),
                  f"{r.choice} · {r.channel}{': ' + redact(r.raw_text)[:200] if r.raw_text else ''}")
            for r in responses]
