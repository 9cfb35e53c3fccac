"""The answer to a STOP is in the customer's language, however their number was written down."""

from __future__ import annotations

from notifier.delivery.optouts import language_of, reply
from notifier.store.db import transaction
from tests.standins.fixtures import add_customer, queue_notice


def test_a_stop_from_a_chinese_customer_whose_number_is_stored_with_spaces_is_answered_in_chinese(factory,
                                                                                                tmp_settings):
    with transaction(factory) as session:
        add_customer(session, phone="+86 138 0013 8000", language="zh-CN")
        add_customer(session, phone="+86 139 0013 8000", language="en")  # same last digits, another customer
    with factory() as session:
        language = language_of(session, "+8613800138000", "STOP", "en")
        stranger = language_of(session, "+8613700138000", "STOP", "en")
    assert language == "zh-CN" and stranger == "en"
    assert reply(tmp_settings, "stop", language).startswith(f"【{tmp_settings.company_name_zh}】您已退订")


def test_the_language_of_our_last_notice_to_the_number_wins(factory):
    with transaction(factory) as session:
        customer = add_customer(session, phone=None, language="en")
        notice = queue_notice(session, customer, "sms", "航班取消", recipient="+8613800138000")
        notice.language = "zh-CN"
    with factory() as session:
        assert language_of(session, "+8613800138000", "stop", "en") == "zh-CN"
