"""Issue 16, finding 6: `config show` never prints a credential, including one embedded in a URL-valued setting."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli import main

CREDENTIALS = {
    "NOTIFIER_TWILIO_API_BASE": "https://AC123:tw1l1o-pass@twilio-proxy.example",
    "NOTIFIER_SMTP_HOST": "relay-user:sm7p@ss@smtp.example",
    "NOTIFIER_PUBLIC_BASE_URL": "https://preview:pub-s3cret@ferry.example/?token=tok-s3cret&lang=en",
    "NOTIFIER_TWILIO_STATUS_CALLBACK": "https://hooks.example/status?api_key=k3y-s3cret",
}
SECRETS = ("tw1l1o-pass", "sm7p@ss", "ss@smtp", "pub-s3cret", "tok-s3cret", "k3y-s3cret")


@pytest.mark.parametrize("as_json", [False, True])
def test_config_show_masks_passwords_and_tokens_inside_urls(tmp_path, as_json):
    env = {"NOTIFIER_CONFIG": "", "NOTIFIER_DATABASE_URL": f"sqlite:///{tmp_path / 'n.db'}", **CREDENTIALS}
    result = CliRunner().invoke(main, ["config", "show", *(["--json"] if as_json else [])], env=env)

    assert result.exit_code == 0, result.output
    for secret in SECRETS:
        assert secret not in result.output
    shown = json.loads(result.output) if as_json else result.output
    expected = ["https://AC123:****@twilio-proxy.example", "relay-user:****@smtp.example",
                "https://preview:****@ferry.example/?token=****&lang=en", "https://hooks.example/status?api_key=****"]
    for value in expected:
        assert value in (shown.values() if as_json else shown), value
