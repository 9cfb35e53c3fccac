"""The desk put on the app: its blueprint with every page, Flask-Login, CSRF for /desk and the cookie settings."""

from __future__ import annotations

from flask import Flask
from flask_login import LoginManager

from notifier.store.settings import Settings
from notifier.web.desk import views_customers, views_stats, views_work
from notifier.web.desk.auth import DeskAgent, load_agent
from notifier.web.desk.blueprint import csrf, desk, factory

# The view modules add their routes to the blueprint when imported; named here so that is plain.
VIEWS = (views_customers, views_work, views_stats)


def install_desk(app: Flask, settings: Settings) -> None:
    """Register the desk on the app (call before the first request)."""
    app.config.update(SESSION_COOKIE_SECURE=settings.desk_secure_cookies, SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_NAME="notifier_desk",
                      WTF_CSRF_CHECK_DEFAULT=False, WTF_CSRF_SSL_STRICT=True)
    logins = LoginManager()
    logins.session_protection = "strong"
    logins.user_loader(_load_user)
    logins.init_app(app)
    csrf.init_app(app)
    app.register_blueprint(desk)


def _load_user(user_id: str) -> DeskAgent | None:
    with factory()() as session:
        return load_agent(session, user_id)
