"""`notifier demo` as a new user meets it: the summary, a second run, and bad input (one line, no traceback,
nothing written)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from tests.conftest import shared_feeds_folder

XML_BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&lol3;</identifier></alert>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE alert [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&xxe;</identifier></alert>"""


def run_demo(tmp_path: Path, *args: str):
    runner = CliRunner()
    return runner.invoke(main, ["demo", "--db", str(tmp_path / "demo.db"), "--outbox", str(tmp_path / "outbox"),
                                "--bookings", "800", *args], env={"NOTIFIER_CONFIG": ""})


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def test_demo_reports_alert_sailings_bookings_and_outbox(tmp_path):
    result = run_demo(tmp_path)

    assert result.exit_code == 0, result.output
    assert "Red typhoon warning for the Qiongzhou Strait" in result.output
    assert "Sailings suspended:" in result.output and "Bookings affected:" in result.output
    assert "Sample SMS (zh-CN)" in result.output and "Sample SMS (en)" in result.output
    sms_lines = (tmp_path / "outbox" / "sms.jsonl").read_text(encoding="utf-8").splitlines()
    assert sms_lines and all(json.loads(line)["to"].startswith("+") for line in sms_lines)
    assert list((tmp_path / "outbox" / "email").glob("*.eml"))


def test_demo_twice_sends_nothing_twice(tmp_path):
    assert run_demo(tmp_path).exit_code == 0
    sms_before = (tmp_path / "outbox" / "sms.jsonl").read_text(encoding="utf-8")

    again = run_demo(tmp_path)

    assert again.exit_code == 0, again.output
    assert "already processed" in again.output
    assert "Sent: 0" in again.output
    assert (tmp_path / "outbox" / "sms.jsonl").read_text(encoding="utf-8") == sms_before


@pytest.mark.parametrize("content, expected", [
    (b"<alert xmlns='urn:oasis:names:tc:emergency:cap:1.2'><identifier>x</ident", "not well-formed"),
    (XML_BOMB, "unsafe XML"),
    (EXTERNAL_ENTITY, "unsafe XML"),
    (b"\xff\xfe\x00garbage", "not well-formed"),
])
def test_hostile_feed_is_one_line_and_leaves_the_database_unchanged(tmp_path, content, expected):
    assert run_demo(tmp_path).exit_code == 0
    database = tmp_path / "demo.db"
    before = digest(database)
    feed = tmp_path / "bad.xml"
    feed.write_bytes(content)

    result = run_demo(tmp_path, "--feed", str(feed))

    assert result.exit_code == 2
    assert expected in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert digest(database) == before


def test_hostile_feed_on_a_fresh_machine_creates_no_database(tmp_path):
    feed = tmp_path / "bad.xml"
    feed.write_bytes(XML_BOMB)

    result = run_demo(tmp_path, "--feed", str(feed))

    assert result.exit_code == 2
    assert not (tmp_path / "demo.db").exists()


def test_invalid_rule_file_names_file_rule_and_field(tmp_path):
    rules = tmp_path / "my-rules"
    rules.mkdir()
    (rules / "bad.yaml").write_text(
        "rules:\n  - id: storm-x\n    description: d\n    when: {kind: weather_alert}\n    where: {}\n"
        "    then: {disruption: sunk}\n    notify: {template: cancelled}\n", encoding="utf-8")
    config = tmp_path / "notifier.toml"
    config.write_text(f'rules_dirs = ["{rules}"]\n', encoding="utf-8")

    result = CliRunner().invoke(main, ["--config", str(config), "demo", "--db", str(tmp_path / "d.db"),
                                       "--outbox", str(tmp_path / "o")])

    assert result.exit_code == 2
    assert "bad.yaml" in result.output and "storm-x" in result.output and "then.disruption" in result.output
    assert not (tmp_path / "d.db").exists()


def test_missing_feed_file_is_a_clear_error(tmp_path):
    result = run_demo(tmp_path, "--feed", str(tmp_path / "nope.xml"))
    assert result.exit_code != 0
    assert "no such feed file" in result.output


def cap_files():
    folder = Path(__file__).parents[1] / "fixtures" / "feeds"
    try:
        folder = shared_feeds_folder() / "cap"
    except pytest.skip.Exception:
        pass
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in {".cap", ".xml", ".txt", ".atom"})


def test_every_real_cap_file_either_matches_or_says_nothing_matched(tmp_path):
    files = cap_files()
    if not files:
        pytest.skip("no CAP files available (../shared/feeds absent and no fixtures copied)")
    assert run_demo(tmp_path).exit_code == 0
    for feed in files:
        result = run_demo(tmp_path, "--feed", str(feed))
        assert "Traceback" not in result.output, feed
        if result.exit_code == 0:
            assert ("Nothing matched" in result.output or "Sailings suspended" in result.output
                    or "already processed" in result.output), (feed, result.output)
        else:
            assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, (feed, result.output)
