"""The shipped Hong Kong - Macau rules read the Hong Kong Observatory's signal codes: No. 8 and above close the Hong
Kong terminals, No. 3 is an advisory for Macau sailings, a lower signal or a rainstorm warning changes nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest

from notifier.feeds import hko
from notifier.rules.evaluate import decisive_impacts, evaluate
from notifier.rules.load import load_rules
from notifier.rules.network import Network, PortRef, SailingRef
from notifier.store.paths import rules_dir
from tests.rules.test_evaluate import T0

HONG_KONG = PortRef(1, "HKHKG", 22.29, 114.15, timezone="Asia/Hong_Kong", country="HK")
MACAU = PortRef(2, "MOMFM", 22.20, 113.55, timezone="Asia/Macau", country="MO")
SHEKOU = PortRef(3, "CNSHK", 22.48, 113.91, timezone="Asia/Shanghai", country="CN")


def sailing(sailing_id: int, origin: PortRef, destination: PortRef, hours: float) -> SailingRef:
    departure = T0 + timedelta(hours=hours)
    return SailingRef(sailing_id, f"S{sailing_id}", origin.id, destination.id, departure,
                      departure + timedelta(minutes=60))


NETWORK = Network([HONG_KONG, MACAU, SHEKOU], [sailing(1, HONG_KONG, MACAU, 3), sailing(2, MACAU, HONG_KONG, 4),
                                               sailing(3, MACAU, SHEKOU, 3), sailing(4, HONG_KONG, MACAU, 30)])


def signal(code: str, action: str = "ISSUE") -> bytes:
    return (f'{{"WTCSGNL": {{"name": "Tropical Cyclone Warning Signal", "code": "{code}", "actionCode": "{action}", '
            f'"issueTime": "2026-09-14T09:00:00+08:00", "updateTime": "2026-09-14T09:00:00+08:00"}}}}').encode()


def impacts(data: bytes) -> dict[int, tuple[str, str]]:
    [observation] = hko.parse(data)
    found = decisive_impacts(evaluate(load_rules([rules_dir()]), observation, NETWORK, T0 + timedelta(hours=1)))
    return {impact.sailing_id: (impact.kind, impact.rule_id) for impact in found}


@pytest.mark.parametrize("code", ["TC8NE", "TC8SE", "TC8SW", "TC8NW", "TC9", "TC10"])
def test_signal_8_and_above_cancel_the_hong_kong_sailings_in_the_window(code):
    assert impacts(signal(code)) == {1: ("cancelled", "hk-signal-8-terminals"),
                                     2: ("cancelled", "hk-signal-8-terminals")}


def test_signal_3_warns_macau_passengers():
    assert impacts(signal("TC3")) == {1: ("advisory", "signal-3-macau-advisory"),
                                      2: ("advisory", "signal-3-macau-advisory"),
                                      3: ("advisory", "signal-3-macau-advisory")}


@pytest.mark.parametrize("data", [
    signal("TC1"),
    b'{"WRAIN": {"name": "Rainstorm Warning Signal", "code": "WRAINB", "actionCode": "ISSUE",'
    b' "issueTime": "2026-09-14T09:00:00+08:00", "updateTime": "2026-09-14T09:00:00+08:00"}}',
])
def test_a_lower_signal_or_a_rainstorm_warning_disrupts_nothing(data):
    assert impacts(data) == {}


def test_the_signal_in_chinese_is_the_same_signal():
    chinese = signal("TC8NE").replace(b"Tropical Cyclone Warning Signal", "熱帶氣旋警告信號".encode())
    assert impacts(chinese) == impacts(signal("TC8NE"))
