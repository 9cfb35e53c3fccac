"""The desk blueprint and its plumbing: sign-in required on every page, CSRF on every form, secure session cookies,
the page language, and rendering.

Flask-WTF's CSRFProtect checks every POST under /desk (the choice page keeps its own per-link form token, so the
check is not switched on for the whole app); Flask-Login holds the agent with session protection "strong".
Session cookies are HttpOnly, SameSite=Lax and Secure (`desk_secure_cookies` off only for plain-http tests).
Behind a single-sign-on proxy, `desk_identity_header` names the agent, believed from `trusted_proxies` only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache, wraps
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, g, redirect, request, session, url_for
from flask_login import current_user, login_user
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy.orm import Session, sessionmaker

from notifier.store.db import transaction
from notifier.store.paths import templates_dir
from notifier.store.settings import Settings
from notifier.web.desk.auth import DeskAgent, proxy_sign_in
from notifier.web.desk.words import LANGUAGES, words
from notifier.web.throttle import trusted_networks

desk = Blueprint("desk", __name__, url_prefix="/desk")
csrf = CSRFProtect()
# Pages an agent reaches before signing in.
OPEN_ENDPOINTS = ("desk.sign_in_page", "desk.sign_in_post")


@desk.before_request
def _signed_in_and_ours() -> Response | None:
    if request.method == "POST":
        csrf.protect()
    _sign_in_from_proxy()
    if request.endpoint not in OPEN_ENDPOINTS and not current_user.is_authenticated:
        if request.method == "POST":
            return Response("sign in first\n", status=401, mimetype="text/plain")
        return redirect(url_for("desk.sign_in_page", next=request.full_path if request.args else request.path))
    return None


def _sign_in_from_proxy() -> None:
    # A single-sign-on proxy names the agent; the header is believed from a trusted proxy's address only.
    header = settings().desk_identity_header
    if not header or not _from_trusted_proxy(request.remote_addr or ""):
        return
    name = request.headers.get(header, "").strip()
    if not name or (current_user.is_authenticated and agent().name == name):
        return
    with transaction(factory()) as db:
        proxied = proxy_sign_in(db, name)
    if proxied is not None:
        session.clear()
        login_user(proxied)


def _from_trusted_proxy(address: str) -> bool:
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(peer in network for network in trusted_networks(settings().trusted_proxies))


@desk.errorhandler(CSRFError)
def _bad_form(_error: CSRFError) -> Response:
    return render("problem.html.j2", 400, message=page_words()["refused"] + ": CSRF")


# --- plumbing -------------------------------------------------------------------------------------------------

def agent() -> DeskAgent:
    """The signed-in agent."""
    return current_user._get_current_object()  # noqa: SLF001 - Flask-Login's proxy, unwrapped


def settings() -> Settings:
    """The app's settings (set by notifier.web.app.create_app, as are the factory and the clock)."""
    return current_app.config["NOTIFIER_SETTINGS"]


def factory() -> sessionmaker[Session]:
    """The app's session factory."""
    return current_app.config["NOTIFIER_FACTORY"]


def now() -> datetime:
    """The app's clock (injectable in tests): every desk action is dated by it."""
    clock: Callable[[], datetime] = current_app.config["NOTIFIER_CLOCK"]
    return clock()


def language() -> str:
    """The page language: ?lang= (remembered for the session), else the browser's preference."""
    asked = request.args.get("lang")
    if asked in LANGUAGES:
        session["desk_lang"] = asked
    chosen = session.get("desk_lang") or request.accept_languages.best_match(["zh-CN", "zh", "en"]) or "en"
    return "zh-CN" if chosen.startswith("zh") else "en"


def page_words() -> dict[str, Any]:
    """The labels of the current page language."""
    return words(language())


def approvers_only(view: Callable[..., Response]) -> Callable[..., Response]:
    """Refuse (403) an agent whose role may not approve or send broadcasts."""
    @wraps(view)
    def checked(*args: Any, **kwargs: Any) -> Response:
        if not agent().approves:
            return render("problem.html.j2", 403, message=page_words()["refused"])
        return view(*args, **kwargs)
    return checked


@lru_cache(maxsize=1)
def _desk_pages() -> Environment:
    # Agents across ports compare times: the desk shows them in UTC, always with the zone, by one filter.
    pages = Environment(loader=FileSystemLoader(str(templates_dir() / "desk")), autoescape=True,
                        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    pages.filters["utc"] = lambda moment: moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "-"
    return pages


def render(name: str, status: int = 200, **context: Any) -> Response:
    """A desk page in the current language, with the form token and the signed-in agent."""
    lang = language()
    other = "en" if lang == "zh-CN" else "zh-CN"
    args = {key: value for key, value in request.args.items() if key != "lang"} | {"lang": other}
    signed_in = current_user.is_authenticated
    html = _desk_pages().get_template(name).render(
        nonce=g.csp_nonce, lang=lang, t=words(lang), csrf_token=generate_csrf(),
        agent=agent() if signed_in else None, other_language_url=f"{request.path}?{urlencode(args)}", **context)
    return Response(html, status=status, mimetype="text/html")
