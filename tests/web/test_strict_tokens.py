"""Issue 16, finding 4: a link with characters added (base64 padding, an encoded space, a dot, a letter) is not the
link we sent: it is not found, whatever page it is for, and altered spellings of one link cannot each get their
own flood budget."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from notifier.aftercare import satisfaction
from notifier.delivery.optouts import UnsubscribeLinkError, read_unsubscribe_token, unsubscribe_token
from notifier.planning import links
from notifier.store.models import OptOut
from tests.aftercare.test_responses import NOW, db_state, factory, planned_template, sms_notice  # noqa: F401
from tests.web.test_security_web import clock, client, form_token, settings, strict, token_of  # noqa: F401
from tests.web.test_twilio import emailed

TRAILING = ["==", "=", "%20", ".", "A", "_", "-", "%0A", "%00", "~"]


def test_a_link_with_trailing_characters_is_not_found(client, factory):  # noqa: F811
    token = token_of(sms_notice(factory, "en"))
    form = form_token(client, token)
    before = db_state(factory)

    for number, extra in enumerate(TRAILING):
        shown = client.get(f"/c/{token}{extra}")
        posted = client.post(f"/c/{token}{extra}", data={"form_token": form, "option": "1"},
                             environ_base={"REMOTE_ADDR": f"198.18.1.{number}"})
        for response in (shown, posted):
            assert response.status_code == 404, extra
            assert "This link is not valid" in response.get_data(as_text=True)

    assert db_state(factory) == before
    assert client.get(f"/c/{token}").status_code == 200  # the link as sent still works


def test_padded_variants_share_one_throttle_budget(strict, factory, settings):  # noqa: F811 - 4 POSTs a minute a link
    token = token_of(sms_notice(factory, "en"))
    link = links.read_token(settings.secret_key, token, now=NOW)
    resigned = [links.make_token(settings.secret_key, link.booking_id, link.disruption_id,
                                 link.deadline - timedelta(minutes=minutes)) for minutes in (1, 2, 3)]
    before = db_state(factory)

    def post(spelling: str, number: int):
        return strict.post(f"/c/{spelling}", data={"option": "9"}, environ_base={"REMOTE_ADDR": f"192.0.2.{number}"})

    padded = [post(token + extra, number) for number, extra in enumerate(TRAILING)]
    spelled = [post(spelling, 50 + number) for number, spelling in enumerate([token, *resigned, token])]

    assert [r.status_code for r in padded] == [404] * len(TRAILING)
    # Four POSTs for this booking's choice, in whatever spelling, then the flood limit (the form was no good: 400).
    assert [r.status_code for r in spelled] == [400] * 4 + [429]
    assert db_state(factory) == before


def test_an_unsubscribe_link_with_trailing_characters_is_not_found(client, factory, settings):  # noqa: F811
    token = unsubscribe_token(settings.secret_key, emailed(factory))

    for extra in TRAILING:
        assert client.get(f"/unsubscribe/{token}{extra}").status_code == 404, extra
        assert client.post(f"/unsubscribe/{token}{extra}").status_code == 404, extra

    with factory() as session:
        assert session.scalar(select(func.count()).select_from(OptOut)) == 0
    assert client.post(f"/unsubscribe/{token}").status_code == 200


@pytest.mark.parametrize("extra", ["==", "=", " ", ".", "A", "\n", "\x00", "~"])
def test_every_kind_of_token_with_trailing_characters_is_refused(extra):
    deadline = NOW + timedelta(hours=6)
    choice = links.make_token("s3cret", 42, 7, deadline)
    unsubscribe = unsubscribe_token("s3cret", 12345)
    score = satisfaction.make_token("s3cret", 42, 7)
    assert (links.read_token("s3cret", choice, now=NOW).booking_id, read_unsubscribe_token("s3cret", unsubscribe),
            satisfaction.read_token("s3cret", score)) == (42, 12345, (42, 7))

    with pytest.raises(links.LinkError):
        links.read_token("s3cret", choice + extra, now=NOW)
    with pytest.raises(UnsubscribeLinkError):
        read_unsubscribe_token("s3cret", unsubscribe + extra)
    assert satisfaction.read_token("s3cret", score + extra) is None
