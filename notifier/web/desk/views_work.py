"""Desk pages for work that comes in: the inbox of tickets, the follow-up worklist, and broadcasts awaiting a
second pair of eyes. Each calls the same functions the CLI does (notifier.aftercare.followups,
notifier.broadcasts.manual), so the CLI and the desk work on the same rows under the same rules."""

from __future__ import annotations

from collections.abc import Callable

from flask import Response, redirect, request, url_for
from sqlalchemy.orm import Session

from notifier.aftercare import followups, tickets
from notifier.broadcasts.manual import approve, send
from notifier.broadcasts.preview import recent_broadcasts
from notifier.errors import NotifierError
from notifier.store.db import transaction
from notifier.privacy import mask_address, redact
from notifier.store.models import Customer, Ticket
from notifier.store.status import AWAITING_APPROVAL, APPROVED
from notifier.web.desk.blueprint import agent, approvers_only, desk, factory, now, page_words, render, settings
from notifier.web.desk.forms import CategoryForm, CloseFollowUpForm, ReplyForm, ResolveForm


# --- tickets ------------------------------------------------------------------------------------------------------

@desk.get("/tickets")
def ticket_list() -> Response:
    """Open and answered tickets, the one due first on top."""
    with factory()() as db:
        rows = [_ticket_row(db, t) for t in tickets.inbox(db)]
    return render("tickets.html.j2", tickets=rows, now=now())


@desk.get("/tickets/<int:ticket_id>")
def ticket_page(ticket_id: int, message: str = "", status: int = 200) -> Response:
    """One ticket: the message, who sent it, the SLA, and the forms to answer and resolve it."""
    with factory()() as db:
        try:
            row = _ticket_row(db, tickets.ticket(db, ticket_id))
        except NotifierError:
            return render("problem.html.j2", 404, message=page_words()["nothing"])
    return render("ticket.html.j2", status, ticket=row, message=message, now=now())


def _ticket_row(db: Session, ticket: Ticket) -> dict:
    customer = db.get(Customer, ticket.customer_id) if ticket.customer_id else None
    return {"id": ticket.id, "channel": ticket.channel, "category": ticket.category, "status": ticket.status,
            "body": redact(ticket.body), "sender": mask_address(ticket.channel, ticket.sender) if ticket.sender else "",
            "customer_id": customer.id if customer else None, "customer_ref": customer.ref if customer else "",
            "assigned_to": ticket.assigned_to or "", "created_at": ticket.created_at, "due_at": ticket.due_at,
            "resolution": ticket.resolution or "", "language": ticket.language}


@desk.post("/tickets/<int:ticket_id>/take")
def take_ticket(ticket_id: int) -> Response:
    """Assign the ticket to the signed-in agent."""
    return _ticket_action(ticket_id, lambda db: tickets.assign(db, ticket_id, agent().name))


@desk.post("/tickets/<int:ticket_id>/category")
def change_category(ticket_id: int) -> Response:
    """Correct the ticket's category."""
    form = CategoryForm(request.form)
    if not form.validate():
        return ticket_page(ticket_id, page_words()["refused"], 400)
    return _ticket_action(ticket_id, lambda db: tickets.recategorise(db, ticket_id, form.category.data, agent().name))


@desk.post("/tickets/<int:ticket_id>/reply")
def reply_ticket(ticket_id: int) -> Response:
    """Send the agent's answer through the outbox on the ticket's channel."""
    form = ReplyForm(request.form)
    if not form.validate():
        return ticket_page(ticket_id, page_words()["refused"], 400)
    return _ticket_action(ticket_id, lambda db: tickets.reply(db, settings(), ticket_id, agent().name,
                                                               form.text.data, now()))


@desk.post("/tickets/<int:ticket_id>/resolve")
def resolve_ticket(ticket_id: int) -> Response:
    """Close the ticket with how it was resolved."""
    form = ResolveForm(request.form)
    if not form.validate():
        return ticket_page(ticket_id, page_words()["refused"], 400)
    return _ticket_action(ticket_id, lambda db: tickets.resolve(db, ticket_id, agent().name, form.note.data, now()))


def _ticket_action(ticket_id: int, action: Callable[[Session], object]) -> Response:
    try:
        with transaction(factory()) as db:
            action(db)
    except NotifierError as refused:
        return ticket_page(ticket_id, f"{page_words()['refused']}: {refused}", 409)
    return redirect(url_for("desk.ticket_page", ticket_id=ticket_id, done="1"), code=303)


# --- the follow-up worklist ---------------------------------------------------------------------------------------

@desk.get("/followups")
def followup_list(message: str = "", status: int = 200) -> Response:
    """The follow-ups still to do, most urgent first, with the reason and the next step (masked contacts)."""
    with transaction(factory()) as db:
        followups.refresh(db, settings(), now())
        items = followups.worklist(db, settings())
    return render("followups.html.j2", status, items=items, message=message)


@desk.post("/followups/<int:item_id>/take")
def take_followup(item_id: int) -> Response:
    """Take a follow-up (nobody else can take it meanwhile)."""
    return _followup_action(lambda db: followups.take(db, item_id, agent().name, now()))


@desk.post("/followups/<int:item_id>/close")
def close_followup(item_id: int) -> Response:
    """Close a follow-up with its outcome and what was done."""
    form = CloseFollowUpForm(request.form)
    if not form.validate():
        return followup_list(page_words()["refused"], 400)
    return _followup_action(lambda db: followups.close(db, item_id, form.outcome.data, form.note.data,
                                                       agent().name, now()))


def _followup_action(action: Callable[[Session], object]) -> Response:
    try:
        with transaction(factory()) as db:
            action(db)
    except NotifierError as refused:
        return followup_list(f"{page_words()['refused']}: {refused}", 409)
    return redirect(url_for("desk.followup_list", done="1"), code=303)


# --- broadcasts (duty officers) ----------------------------------------------------------------------------------

@desk.get("/broadcasts")
@approvers_only
def broadcast_list(message: str = "", status: int = 200) -> Response:
    """Broadcasts awaiting approval or ready to send."""
    waiting = [{"id": b.id, "status": b.status, "created_by": b.created_by, "messages": b.recipient_count}
               for b, _counts in recent_broadcasts(factory()) if b.status in (AWAITING_APPROVAL, APPROVED)]
    return render("broadcasts.html.j2", status, broadcasts=waiting, message=message)


@desk.post("/broadcasts/<int:broadcast_id>/approve")
@approvers_only
def approve_broadcast(broadcast_id: int) -> Response:
    """Approve a broadcast another operator created (four eyes)."""
    return _broadcast_action(lambda: approve(factory(), broadcast_id, agent().name, now()))


@desk.post("/broadcasts/<int:broadcast_id>/send")
@approvers_only
def send_broadcast(broadcast_id: int) -> Response:
    """Release an approved broadcast to the dispatcher."""
    return _broadcast_action(lambda: send(factory(), broadcast_id, agent().name, now()))


def _broadcast_action(action: Callable[[], object]) -> Response:
    try:
        action()
    except NotifierError as refused:
        return broadcast_list(f"{page_words()['refused']}: {refused}", 409)
    return redirect(url_for("desk.broadcast_list", done="1"), code=303)
