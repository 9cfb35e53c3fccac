"""Templates: the Jinja2 environment, rendering with a language fallback chain, and local port times and money
formatted with Babel; a rendered SMS carries its encoding and segments (counted by notifier.channels.segments).

Every template runs in Jinja's sandbox with StrictUndefined: feed text and operator free text are only ever
*values* (never template source), a missing value stops the broadcast before anything is sent, and HTML email
is autoescaped.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale, UnknownLocaleError
from babel.dates import format_datetime
from babel.numbers import format_currency
from jinja2 import FileSystemLoader, StrictUndefined, TemplateNotFound, UndefinedError, select_autoescape
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from notifier.channels.segments import sms_encoding, sms_segments
from notifier.errors import NotifierError
from notifier.store.paths import templates_dir

FALLBACK_LANGUAGE = "en"


class TemplateError(NotifierError):
    """A template is missing, broken, or lacks a value: nothing is sent."""

    exit_code = 3


@dataclass(frozen=True)
class Rendered:
    """One rendered message for one channel and language."""

    channel: str
    language: str
    body_text: str
    subject: str | None = None
    body_html: str | None = None
    segments: int = 0
    encoding: str = ""


# --- text from outside ------------------------------------------------------------------------------------------

# Cut text ends in three dots, not "…": that one character would make a whole English SMS UCS-2 (twice the parts).
CUT_MARK = "..."


def quotable(text: str, limit: int) -> str:
    """Free text from outside (a feed's headline or remark) as one safe template value: control, format and
    private-use characters out (U+E000/U+E001 are the slot marks of notifier.planning.shapes), whitespace folded to single
    spaces, and cut to `limit` characters with a trailing "..." when longer."""
    folded = " ".join("".join(" " if unicodedata.category(c)[0] == "C" else c for c in text).split())
    if len(folded) <= limit:
        return folded
    return folded[:limit - len(CUT_MARK)].rstrip() + CUT_MARK


# --- locale formatting ---------------------------------------------------------------------------------------

@lru_cache(maxsize=32)
def babel_locale(language: str) -> Locale:
    """A Babel locale for a language tag such as 'zh-CN' or 'en'."""
    try:
        return Locale.parse(language.replace("-", "_"))
    except (ValueError, TypeError, UnknownLocaleError):  # a customer record's language may be any text
        return Locale.parse(FALLBACK_LANGUAGE)


def local_time(moment: datetime, timezone: str, language: str, pattern: str | None = None) -> str:
    """A UTC moment shown in the port's time zone, formatted for the recipient's language."""
    zone = ZoneInfo(timezone)
    if pattern is None:
        pattern = "M月d日 HH:mm" if language.startswith("zh") else "EEE d MMM HH:mm"
    return format_datetime(moment.astimezone(zone), pattern, tzinfo=zone, locale=babel_locale(language))


def money(amount: Decimal, currency: str, language: str) -> str:
    """An amount in its own currency, formatted for the recipient's language."""
    return format_currency(amount, currency, locale=babel_locale(language))


# --- templates -----------------------------------------------------------------------------------------------

def language_chain(language: str) -> list[str]:
    """zh-Hant-HK -> [zh-Hant-HK, zh-Hant, zh, en]: try the most specific template first."""
    parts = language.split("-")
    chain = ["-".join(parts[:i]) for i in range(len(parts), 0, -1)]
    if language.startswith("zh") and "zh-CN" not in chain:
        chain.append("zh-CN")
    if FALLBACK_LANGUAGE not in chain:
        chain.append(FALLBACK_LANGUAGE)
    return chain


@lru_cache(maxsize=8)
def environment(folder: str | None = None) -> ImmutableSandboxedEnvironment:
    """The sandboxed, strict Jinja2 environment over the templates folder (compiled templates are cached)."""
    env = ImmutableSandboxedEnvironment(
        loader=FileSystemLoader(folder or str(templates_dir())), undefined=StrictUndefined,
        autoescape=select_autoescape(enabled_extensions=("html", "html.j2")), keep_trailing_newline=False,
        trim_blocks=True, lstrip_blocks=True, auto_reload=False)
    return env


def resolve_language(name: str, language: str, folder: str | None = None) -> str:
    """The first language in the fallback chain that has an SMS or email template called `name`."""
    root = Path(folder or templates_dir())
    for candidate in language_chain(language):
        if (root / "sms" / f"{name}.{candidate}.txt.j2").is_file() or \
                (root / "email" / f"{name}.{candidate}.txt.j2").is_file():
            return candidate
    raise TemplateError(f"no template '{name}' in any of {', '.join(language_chain(language))}")


def available_templates(folder: str | None = None) -> list[str]:
    """Template names that exist (for error messages and `--template` validation)."""
    root = Path(folder or templates_dir())
    return sorted({p.name.split(".")[0] for kind in ("sms", "email") for p in (root / kind).glob("*.j2")})


def render(channel: str, name: str, language: str, context: dict[str, Any], folder: str | None = None) -> Rendered:
    """Render one message; a missing template or value raises TemplateError naming it."""
    language = resolve_language(name, language, folder)
    env = environment(folder)
    try:
        if channel == "sms":
            body = env.get_template(f"sms/{name}.{language}.txt.j2").render(context).strip()
            return Rendered("sms", language, body, segments=sms_segments(body), encoding=sms_encoding(body))
        text = env.get_template(f"email/{name}.{language}.txt.j2").render(context)
        subject, _, body = text.partition("\n")
        if not subject.startswith("Subject:"):
            raise TemplateError(f"email/{name}.{language}.txt.j2 must start with a 'Subject:' line")
        html = env.get_template(f"email/{name}.{language}.html.j2").render(context)
        return Rendered("email", language, body.strip() + "\n", subject=subject[8:].strip(), body_html=html)
    except TemplateNotFound as exc:
        raise TemplateError(f"template {exc.name} is missing") from None
    except UndefinedError as exc:
        raise TemplateError(f"template '{name}' ({channel}, {language}) needs a value that is missing: "
                            f"{exc.message}") from None
    except (TemplateSyntaxError, SecurityError) as exc:
        raise TemplateError(f"template '{name}' ({channel}, {language}) is broken: {exc}") from None
