"""Feeds in: `feeds inspect` (read one file or URL), `feeds list` (health), `feeds poll` (fetch and hand to the
rules)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import TYPE_CHECKING

import click

from notifier.commands.common import ROW_ID, echo_lines, open_database, operator_option, settings_from

if TYPE_CHECKING:
    from notifier.feeds import Observation
    from notifier.rules.model import Rule
    from notifier.rules.network import Network
    from notifier.store.settings import Settings


@click.group()
def feeds() -> None:
    """Read and watch feeds."""


@feeds.command("inspect")
@click.argument("path_or_url")
@click.option("--format", "feed_format", default="auto", show_default=True,
              type=click.Choice(["auto", "cap", "atom", "nws", "gtfs_rt", "dcsa", "port_status", "hko_warnings"]),
              help="The feed's format; auto sniffs it from the content.")
@click.option("--source", default="", help="Name to record as the source when the feed does not say.")
@click.pass_context
def feeds_inspect(ctx: click.Context, path_or_url: str, feed_format: str, source: str) -> None:
    """Print the normalised observations of a feed file or URL as JSON lines; notes, and which rule would take
    each observation (with the sailings of the configured network it would reach), go to stderr."""
    from notifier.feeds import FeedParseError
    from notifier.feeds.fetch import fetch
    from notifier.feeds.sniff import parse_any

    result = fetch(path_or_url)
    notes: list[str] = []
    try:
        _, observations = parse_any(result.body or b"", format=feed_format, source=source,
                                    filename=path_or_url, notes=notes)
    except FeedParseError as exc:
        raise FeedParseError(f"{path_or_url}: {exc}") from None
    for observation in observations:
        click.echo(json.dumps(observation.to_json(), ensure_ascii=False, sort_keys=True))
    for note in notes:
        click.echo(f"note: {note}", err=True)
    for line in _rule_lines(settings_from(ctx), observations):
        click.echo(line, err=True)


def _rule_lines(settings: Settings, observations: list[Observation]) -> list[str]:
    """Which rule would take each observation, so an operator sees at once whether a new feed matters here."""
    from pathlib import Path

    from notifier.ops.console import inspect_rule_lines
    from notifier.rules.evaluate import evaluate
    from notifier.rules.load import load_rules
    from notifier.rules.network import Network
    from notifier.store.models import utcnow
    from notifier.store.paths import rules_dir

    rules, now = load_rules([rules_dir(), *map(Path, settings.rules_dirs)]), utcnow()
    network = _network(settings, now)
    verdicts = []
    for observation in observations:
        matches = evaluate(rules, observation, network or Network([], []), now, explain=False)
        verdicts.append((observation, [(m.rule_id, m.rule.then.kind, len(m.impacts)) for m in matches
                                       if m.matched or _takes(m.rule, observation, now)]))
    return inspect_rule_lines(verdicts, network is not None)


def _takes(rule: Rule, observation: Observation, now: datetime) -> bool:
    """The rule's `when:` holds: it takes the observation, whether or not a sailing of this network is in reach."""
    from notifier.rules.conditions import check_condition

    return ((rule.kind is None or rule.kind == observation.kind)
            and all(check_condition(c, observation, now, False)[0] for c in rule.conditions))


def _network(settings: Settings, now: datetime) -> Network | None:
    """The configured database's ports and sailings, or None where there is none (inspecting needs no database)."""
    from notifier.errors import NotifierError
    from notifier.ops.pipeline import load_network, read_zone_table

    try:
        factory = open_database(settings)
    except NotifierError:
        return None
    zone_table = read_zone_table(settings.zone_codes_file) if settings.zone_codes_file else None
    with factory() as session:
        return load_network(session, now, zone_table)


@feeds.command("list")
@click.pass_context
def feeds_list(ctx: click.Context) -> None:
    """The configured feeds with their health (ok, failing, stale, never polled) and the watcher's heartbeat."""
    from notifier.ops.console import feeds_lines, quarantine_lines
    from notifier.ops.polling import source_health
    from notifier.ops.quarantine import quarantined
    from notifier.store.models import utcnow
    from notifier.ops.watcher import watcher_states

    settings = settings_from(ctx)
    factory = open_database(settings)
    echo_lines(feeds_lines(source_health(factory, settings), watcher_states(factory, settings)))
    with factory() as session:
        echo_lines(quarantine_lines(quarantined(session, utcnow())))


@feeds.command("retry")
@click.argument("item_id", type=ROW_ID)
@click.option("--broadcast", "is_broadcast", is_flag=True, help="ID is a broadcast whose planning failed.")
@operator_option
@click.pass_context
def feeds_retry(ctx: click.Context, item_id: int, is_broadcast: bool, operator: str | None) -> None:
    """Put a quarantined feed item (or, with --broadcast, a broadcast) back in the queue once its cause is fixed:
    the watcher's next pipeline run takes it."""
    from notifier.ops.quarantine import retry_broadcast, retry_item

    factory = open_database(settings_from(ctx))
    if is_broadcast:
        broadcast = retry_broadcast(factory, item_id, operator or "cli")
        click.echo(f"broadcast #{broadcast.id} is back to planning: the watcher's next pipeline run plans the rest")
        return
    item = retry_item(factory, item_id, operator or "cli")
    click.echo(f"feed item #{item.id} ({item.source}) is queued again: the watcher's next pipeline run, or "
               f"`notifier feeds poll --once`, processes it")


@feeds.command("poll")
@click.option("--once", is_flag=True, help="Poll every feed once, run the rules, and exit.")
@click.pass_context
def feeds_poll(ctx: click.Context, once: bool) -> None:
    """Poll the configured feeds and hand what is new to the rules (without --once: keep polling)."""
    from pathlib import Path

    from notifier.errors import UsageError
    from notifier.ops.console import poll_lines
    from notifier.ops.polling import poll_all
    from notifier.ops.watcher import Watcher, run_pipeline
    from notifier.rules.load import load_rules
    from notifier.store.paths import rules_dir

    settings = settings_from(ctx)
    if not settings.feeds:
        raise UsageError("no feeds configured: add [[feeds]] tables (name, url, format, poll_seconds) to "
                         "notifier.toml")
    if not once:
        runner = Watcher(settings, jobs=("poll", "pipeline"))
        click.echo(f"polling {len(settings.feeds)} feed(s) as watcher {runner.owner} (stop with Ctrl-C)", err=True)
        runner.run()
        return
    rules_loaded = load_rules([rules_dir(), *map(Path, settings.rules_dirs)])
    factory = open_database(settings)
    results = poll_all(factory, settings)
    echo_lines(poll_lines(results, run_pipeline(factory, settings, rules_loaded)))
    if any(r.outcome == "error" for r in results):
        sys.exit(1)
