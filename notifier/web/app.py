"""The web side (`notifier serve`): the customer's choice page, and the Twilio webhooks blueprint.

GET /c/<token> only shows: the disruption, the offers with one button each, the deadline and what happens
without an answer, or the choice already recorded. Mail scanners and link previews open links, so only a POST
decides, and a POST must carry a form token signed for that very link (CSRF) and come from our own origin.
Personal pages are never cached, never framed, load nothing from elsewhere and send no referrer off-site.
A flood of POSTs is refused with 429 and Retry-After, per link (the booking and disruption a verified token names)
and per client address (notifier.web.throttle). A token is checked for its exact syntax before its signature.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, current_app, g, redirect, request, url_for
from itsdangerous import BadSignature, TimestampSigner
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from notifier.planning import links
from notifier.planning.notices import CAUSE_WORDS, TYPHOON_WORDS
from notifier.store.settings import ConfigError, Settings
from notifier.store.db import make_engine, require_schema, session_factory, transaction
from notifier.messages import local_time, money
from notifier.store.models import Booking, Customer, Disruption, Notification, Route, Sailing, utcnow
from notifier.store.capacity import held_places
from notifier.store.paths import templates_dir
from notifier.aftercare.responses import (ChoiceRefused, choice_keys, current_offers, decision_of, default_policy,
                                          offer_deadline, record_choice, sailing_view)
from notifier.web.throttle import ChoiceThrottle
from notifier.store.status import HELD

PAGE_LANGUAGES = ("zh-CN", "en")
FORM_MAX_AGE_SECONDS = 24 * 3600
REFUSAL_STATUS = {"already_chosen": 409, "full": 409, "expired": 410, "unknown_option": 400, "bad_form": 400,
                  "no_offers": 404, "invalid": 404, "too_many": 429, "too_large": 413}
CHANNEL_NAMES = {"en": {"web": "this page", "sms": "SMS", "email": "email", "default": "the deadline rule",
                        "agent": "our agent"},
                 "zh-CN": {"web": "本页面", "sms": "短信", "email": "邮件", "default": "逾期规则", "agent": "客服"}}

choice_pages = Blueprint("choice", __name__)


def create_app(settings: Settings, factory: sessionmaker[Session] | None = None,
               clock: Callable[[], datetime] | None = None) -> Flask:
    """The Flask app: choice pages, and the Twilio webhooks when `notifier.web.twilio` is installed."""
    if not settings.secret_key:
        raise ConfigError("the choice page needs the key the links were signed with: set NOTIFIER_SECRET_KEY")
    if factory is None:
        engine = make_engine(settings.database_url)
        require_schema(engine)
        factory = session_factory(engine)
    app = Flask("notifier.web", static_folder=None)
    app.config.update(NOTIFIER_SETTINGS=settings, NOTIFIER_FACTORY=factory, NOTIFIER_CLOCK=clock or utcnow,
                      SECRET_KEY=settings.secret_key, MAX_CONTENT_LENGTH=64 * 1024)
    app.extensions["notifier_throttle"] = ChoiceThrottle(settings.choice_posts_per_minute_per_link,
                                                         settings.choice_posts_per_minute_per_address,
                                                         settings.trusted_proxies)
    from notifier.aftercare.inbound_email import inbound_email
    from notifier.aftercare.satisfaction import satisfaction_pages
    from notifier.web.desk.site import install_desk
    from notifier.web.twilio import webhooks

    app.register_blueprint(choice_pages)
    app.register_blueprint(webhooks)
    app.register_blueprint(satisfaction_pages)
    app.register_blueprint(inbound_email)
    install_desk(app, settings)
    app.before_request(_new_nonce)
    app.after_request(_security_headers)
    for status in (404, 405):
        app.register_error_handler(status, _not_a_page)
    app.register_error_handler(413, _too_large)
    return app


# --- plumbing -----------------------------------------------------------------------------------------------------

def _settings() -> Settings:
    return current_app.config["NOTIFIER_SETTINGS"]


def _factory() -> sessionmaker[Session]:
    return current_app.config["NOTIFIER_FACTORY"]


def _now() -> datetime:
    return current_app.config["NOTIFIER_CLOCK"]()


def _new_nonce() -> None:
    g.csp_nonce = secrets.token_urlsafe(16)


def _security_headers(response: Response) -> Response:
    nonce = getattr(g, "csp_nonce", "")
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    # The link token is in the path: never send it to another site, but keep Origin on our own POSTs.
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@lru_cache(maxsize=4)
def _pages(folder: str) -> Environment:
    return Environment(loader=FileSystemLoader(folder), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True)


def _render(name: str, status: int = 200, **context: Any) -> Response:
    settings = _settings()
    lang = context.get("lang", "en")
    context.setdefault("company", settings.company_name_zh if lang == "zh-CN" else settings.company_name)
    html = _pages(str(templates_dir() / "web")).get_template(name).render(
        nonce=g.csp_nonce, helpline=settings.helpline, **context)
    return Response(html, status=status, mimetype="text/html")


def _problem(reason: str, languages: tuple[str, ...] = PAGE_LANGUAGES, back_url: str = "") -> Response:
    lang = languages[0]
    return _render("problem.html.j2", REFUSAL_STATUS.get(reason, 400), lang=lang, languages=languages,
                   reason=reason, back_url=back_url)


def _not_a_page(_error: Exception) -> Response:
    return _problem("invalid")


def _too_large(_error: Exception) -> Response:
    return _problem("too_large")


def _page_language(customer_language: str) -> str:
    wanted = request.args.get("lang") or customer_language or ""
    return "zh-CN" if wanted.lower().startswith("zh") else "en"


def _other_language_url(token: str, lang: str) -> str:
    return url_for("choice.show_choice", token=token, lang="en" if lang == "zh-CN" else "zh-CN")


def _form_signer() -> TimestampSigner:
    return TimestampSigner(_settings().secret_key, salt="notifier.choice-form")


def form_token(link_token: str) -> str:
    """A per-page token bound to the link (timestamp + signature), checked on POST against CSRF."""
    signed = _form_signer().sign(link_token).decode()
    return signed[len(link_token) + 1:]


def _form_is_ours(link_token: str) -> bool:
    origin = request.headers.get("Origin")
    if origin is not None:
        allowed = {_origin_of(request.host_url), _origin_of(_settings().public_base_url)}
        if origin not in allowed:
            return False
    try:
        _form_signer().unsign(f"{link_token}.{request.form.get('form_token', '')}", max_age=FORM_MAX_AGE_SECONDS)
    except BadSignature:
        return False
    return True


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _read_link(token: str) -> links.ChoiceLink | Response:
    try:
        return links.read_token(_settings().secret_key, token, now=_now())
    except links.LinkExpired:
        return _problem("expired")
    except links.LinkError:
        return _problem("invalid")


# --- the pages ----------------------------------------------------------------------------------------------------

@choice_pages.get("/c/<token>")
def show_choice(token: str) -> Response:
    """The choice page, or the choice already recorded. Never records anything."""
    link = _read_link(token)
    if isinstance(link, Response):
        return link
    with _factory()() as session:
        booking = session.get(Booking, link.booking_id)
        disruption = session.get(Disruption, link.disruption_id)
        if booking is None or disruption is None:
            return _problem("invalid")
        customer = session.get(Customer, booking.customer_id)
        lang = _page_language(customer.language)
        decision = decision_of(session, booking.id, disruption.id)
        if decision is not None:
            return _render(f"done.{lang}.html.j2", **_done_context(session, booking, disruption, decision, lang),
                           other_language_url=_other_language_url(token, lang))
        offers = current_offers(session, booking.id, disruption.id)
        if not choice_keys(offers):
            return _problem("no_offers", (lang,))
        context = _choice_context(session, booking, disruption, offers, lang)
    return _render(f"choice.{lang}.html.j2", **context, form_token=form_token(token),
                   action=url_for("choice.take_choice", token=token, lang=lang),
                   other_language_url=_other_language_url(token, lang))


@choice_pages.post("/c/<token>")
def take_choice(token: str) -> Response:
    """Record the customer's choice, then show it (303 to the GET page); a refusal changes nothing."""
    link = _read_link(token)
    named = None if isinstance(link, Response) else f"{link.booking_id}-{link.disruption_id}"
    wait = current_app.extensions["notifier_throttle"].wait(named, request.remote_addr,
                                                            request.headers.get("X-Forwarded-For"))
    if wait:
        refused = _problem("too_many")
        refused.headers["Retry-After"] = str(math.ceil(wait))
        return refused
    if isinstance(link, Response):
        return link
    with _factory()() as session:
        booking = session.get(Booking, link.booking_id)
        if booking is None:
            return _problem("invalid")
        lang = _page_language(session.get(Customer, booking.customer_id).language)
    back = url_for("choice.show_choice", token=token, lang=lang)
    if not _form_is_ours(token):
        return _problem("bad_form", (lang,), back)
    try:
        with transaction(_factory()) as session:
            record_choice(session, _settings(), link.booking_id, link.disruption_id,
                          request.form.get("option", "")[:4], "web", now=_now())
    except ChoiceRefused as refused:
        return _problem(refused.reason, (lang,), back)
    return redirect(back, code=303)


def _choice_context(session: Session, booking: Booking, disruption: Disruption, offers: list, lang: str
                    ) -> dict[str, Any]:
    settings = _settings()
    sailing = session.get(Sailing, disruption.sailing_id)
    route = session.get(Route, sailing.route_id)
    timezone = sailing.origin.timezone
    options, refund, compensation = [], None, None
    for offer in offers:
        if offer.kind in ("rebook", "standby"):
            view = sailing_view(session, offer.sailing_id, lang)
            options.append(view | {"key": offer.option_key, "kind": offer.kind, "held": offer.status == HELD
                                   and bool(held_places(offer))})
        elif offer.kind == "refund":
            refund = {"key": offer.option_key, "kind": "refund",
                      "amount": money(offer.amount, offer.currency, lang)}
        elif offer.kind == "compensation":
            compensation = {"amount": money(offer.amount, offer.currency, lang)}
    if refund:
        options.append(refund)
    deadline = offer_deadline(offers)
    typhoon = any(word in (disruption.cause_text or "").lower() for word in ("typhoon", "cyclone"))
    return {"lang": lang, "booking": {"ref": booking.ref}, "sailing": sailing_view(session, sailing.id, lang),
            "kind": disruption.kind, "delay_minutes": disruption.delay_minutes,
            "cause": TYPHOON_WORDS[lang] if typhoon else CAUSE_WORDS[lang].get(disruption.cause, disruption.cause),
            "do_not_come": "do_not_come_to_port" in (disruption.policy or {}).get("entitlements", []),
            "options": options, "refund": refund, "compensation": compensation, "refund_days": settings.refund_days,
            "deadline": local_time(deadline, timezone, lang) if deadline else "",
            "no_answer": default_policy(settings, route.jurisdiction),
            "first_held": next((o for o in options if o.get("held")), None),
            "keys": ("、" if lang == "zh-CN" else ", ").join(choice_keys(offers)), "eu": route.jurisdiction == "EU"}


def _done_context(session: Session, booking: Booking, disruption: Disruption, decision, lang: str  # noqa: ANN001
                  ) -> dict[str, Any]:
    settings = _settings()
    origin = session.get(Sailing, disruption.sailing_id).origin
    sent = [CHANNEL_NAMES[lang][channel] for channel in sorted(set(session.scalars(
        select(Notification.channel).where(Notification.booking_id == booking.id,
                                           Notification.disruption_id == disruption.id,
                                           Notification.purpose == "confirmation"))))]
    refund = ({"amount": money(booking.refund_amount, booking.currency, lang), "days": settings.refund_days}
              if decision.choice == "refund" and booking.refund_amount is not None else None)
    return {"lang": lang, "booking": {"ref": booking.ref}, "choice": decision.choice,
            "by_default": decision.channel == "default", "sailing": sailing_view(session, booking.sailing_id, lang),
            "refund": refund, "chosen_at": local_time(decision.received_at, origin.timezone, lang),
            "channel_name": CHANNEL_NAMES[lang].get(decision.channel, decision.channel),
            "confirmation_sent": ("、" if lang == "zh-CN" else " and ").join(sent)}
