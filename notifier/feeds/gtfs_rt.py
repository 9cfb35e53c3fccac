"""GTFS-Realtime TripUpdates and ServiceAlerts (binary protobuf or protobuf text format) -> Observations. Pure.

Trip updates name GTFS trips and stops, not ports: `sailings` holds the trip id and `fields["stops"]` the stop
ids; matching them to our sailings and ports is done later, against the imported static GTFS. Vehicle positions
and the other entity types say nothing about disruptions and are left out (a note counts them).

An entity's version is a digest of its content (its own `timestamp` left out): a producer re-publishes the whole
feed every few seconds with a new header time, and an unchanged trip must be a no-op, not a new feed item.
`feed_timestamp` is what the watcher compares to notice a feed whose clock goes backwards. The text format
(`.asciipb`) is accepted for the specification's own examples and for hand-written test feeds.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from google.protobuf import message, text_format
from google.transit import gtfs_realtime_pb2 as gtfs

from notifier.feeds import FeedParseError, Observation
from notifier.feeds.reading import PARSE_SECONDS, Deadline, check_size, iso, text_encoding

TRIP_RELATIONSHIP = gtfs.TripDescriptor.ScheduleRelationship
# Plain ints: the enum wrapper's attribute lookup is slow in the per-stop loop.
STOP_SCHEDULED = gtfs.TripUpdate.StopTimeUpdate.ScheduleRelationship.Value("SCHEDULED")
STOP_SKIPPED = gtfs.TripUpdate.StopTimeUpdate.ScheduleRelationship.Value("SKIPPED")
# GTFS-RT severity levels in CAP's vocabulary, which the rules use for every format.
CAP_SEVERITY = {"SEVERE": "Severe", "WARNING": "Moderate", "INFO": "Minor", "UNKNOWN_SEVERITY": "Unknown"}
# The protobuf text format opens with the header or an entity, after any comment lines (sniffing uses it too).
GTFS_RT_TEXT = re.compile(r"\A(?:\s*#[^\n]*\n)*\s*(?:header|entity)\s*\{")


def parse(data: bytes, source: str = "", notes: list[str] | None = None,
          seconds: float = PARSE_SECONDS) -> list[Observation]:
    """Parse a GTFS-RT FeedMessage into one Observation per trip update and per service alert."""
    deadline = Deadline(seconds)
    feed = read_feed(data)
    publisher = source or "gtfs-rt"
    feed_time = _header_time(feed.header)
    observations, skipped = [], Counter()
    for entity in deadline.over(feed.entity):
        if entity.HasField("trip_update"):
            observations.append(_checked(trip_update_observation(entity, publisher, feed_time, deadline)))
        elif entity.HasField("alert"):
            observations.append(_checked(alert_observation(entity, publisher, feed_time, deadline)))
        else:
            skipped[_entity_type(entity)] += 1
    if skipped and notes is not None:
        notes.extend(f"{count} {kind} entities left out: not relevant to disruptions"
                     for kind, count in sorted(skipped.items()))
    return observations


def feed_timestamp(data: bytes) -> datetime:
    """The feed header's timestamp (UTC): the watcher refuses a feed whose timestamp goes backwards."""
    feed_time = _header_time(read_feed(data).header)
    if feed_time is None:
        raise FeedParseError("GTFS-RT feed header has no timestamp")
    return feed_time


def read_feed(data: bytes) -> gtfs.FeedMessage:
    """Decode a FeedMessage from binary protobuf or its text format, with the required header checked."""
    check_size(data, "GTFS-RT feed")
    feed = gtfs.FeedMessage()
    text = _as_text_format(data)
    try:
        if text is not None:
            text_format.Parse(text, feed)
        else:
            feed.ParseFromString(data)
    except text_format.ParseError as exc:
        raise FeedParseError(f"GTFS-RT text format is invalid ({str(exc)[:120]})") from None
    except (message.DecodeError, RecursionError, ValueError):
        raise FeedParseError("GTFS-RT feed is not a valid protobuf FeedMessage (corrupt or truncated bytes)") \
            from None
    if not feed.header.gtfs_realtime_version:
        raise FeedParseError("GTFS-RT feed lacks its required header (gtfs_realtime_version): "
                             "not a GTFS-Realtime FeedMessage")
    missing = feed.FindInitializationErrors()
    if missing:
        raise FeedParseError(f"GTFS-RT feed lacks required field(s): {', '.join(missing[:5])}")
    return feed


def _as_text_format(data: bytes) -> str | None:
    # Binary protobuf almost never decodes as UTF-8 text that opens with "header {", so this cannot misfire.
    try:
        text = data.decode(text_encoding(data))
    except UnicodeDecodeError:
        return None
    return text if GTFS_RT_TEXT.match(text) else None


def _checked(observation: Observation) -> Observation:
    # Protobuf hands back a proto2 string that is not valid UTF-8 as bytes instead of failing; refuse it here
    # rather than let bytes reach the JSON the pipeline stores.
    if _has_bytes(vars(observation)):
        raise FeedParseError(f"GTFS-RT entity {observation.external_id!r:.60} has text that is not valid UTF-8")
    return observation


def _has_bytes(value: Any) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if type(item) is bytes:
            return True
        if type(item) is dict:
            pending.extend(item.keys())  # a translation's language becomes a key of `texts`
            pending.extend(item.values())
        elif type(item) is list:
            pending.extend(item)
    return False


def _header_time(header: gtfs.FeedHeader) -> datetime | None:
    return _posix_time(header.timestamp, "feed header timestamp") if header.timestamp else None


def _posix_time(seconds: int, what: str) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise FeedParseError(f"GTFS-RT {what} {seconds} is not a plausible POSIX time") from None


def _version(entity: gtfs.FeedEntity, feed_time: datetime | None) -> str:
    # The measurement time changes on every publication even when nothing else does; it is not part of the news.
    content = gtfs.FeedEntity()
    content.CopyFrom(entity)
    if content.HasField("trip_update"):
        content.trip_update.ClearField("timestamp")
    return "sha256:" + hashlib.sha256(content.SerializeToString(deterministic=True)).hexdigest()[:16]


def _entity_type(entity: gtfs.FeedEntity) -> str:
    for name in ("vehicle", "shape", "stop", "trip_modifications"):
        if entity.HasField(name):
            return name
    return "empty"


def _enum_name(enum: Any, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


def _base(entity: gtfs.FeedEntity, kind: str, source: str, feed_time: datetime | None) -> Observation:
    if not entity.id:
        raise FeedParseError(f"GTFS-RT {kind} entity has no id")
    observation = Observation(source=source, format="gtfs_rt", kind=kind, external_id=entity.id,
                              version=_version(entity, feed_time), sent=feed_time)
    # In an incremental feed is_deleted withdraws the entity: the CAP word for that is Cancel, and the reference
    # is "source,id" like CAP's "sender,identifier", so the pipeline finds the item it withdraws.
    if entity.is_deleted:
        observation.msg_type, observation.references = "Cancel", [f"{source},{entity.id}"]
    return observation


# --- trip updates -----------------------------------------------------------------------------------------------

def trip_update_observation(entity: gtfs.FeedEntity, source: str, feed_time: datetime | None,
                            deadline: Deadline | None = None) -> Observation:
    """One TripUpdate: cancellation, delay in minutes, skipped stops."""
    deadline = deadline or Deadline()
    update, observation = entity.trip_update, _base(entity, "trip_update", source, feed_time)
    trip = update.trip
    relationship = _enum_name(TRIP_RELATIONSHIP, trip.schedule_relationship)
    observation.sailings = [trip.trip_id] if trip.trip_id else []
    observation.routes = [trip.route_id] if trip.route_id else []
    if update.timestamp:
        observation.sent = _posix_time(update.timestamp, f"trip update {entity.id} timestamp")
    fields = observation.fields
    fields.update(schedule_relationship=relationship, start_date=trip.start_date, start_time=trip.start_time,
                  vehicle_id=update.vehicle.id, stops=[_stop_ref(s) for s in deadline.over(update.stop_time_update)],
                  skipped_stops=[_stop_ref(s) for s in update.stop_time_update
                                 if s.schedule_relationship == STOP_SKIPPED])
    delay = _max_delay_seconds(update)
    if delay is not None:
        fields["delay_seconds"] = delay
        fields["delay_minutes"] = _minutes(delay)
    observation.event = _trip_event(relationship, fields)
    return observation


def _stop_ref(update: gtfs.TripUpdate.StopTimeUpdate) -> str:
    # A stop given only by its position in the trip is named by that position.
    return update.stop_id or f"stop_sequence:{update.stop_sequence}"


def _max_delay_seconds(update: gtfs.TripUpdate) -> int | None:
    delays = [update.delay] if update.HasField("delay") else []
    for stop in update.stop_time_update:
        if stop.schedule_relationship != STOP_SCHEDULED:
            continue
        arrival, departure = stop.arrival, stop.departure
        if arrival.HasField("delay"):
            delays.append(arrival.delay)
        if departure.HasField("delay"):
            delays.append(departure.delay)
    return max(delays) if delays else None


def _minutes(seconds: int) -> int:
    """Whole minutes, half a minute rounding up: 29 s is on time, 30 s is a minute late."""
    return (seconds + 30) // 60


def _trip_event(relationship: str, fields: dict[str, Any]) -> str:
    if relationship in ("CANCELED", "DELETED"):
        return "Trip canceled"
    if fields["skipped_stops"]:
        return "Stops skipped"
    if fields.get("delay_minutes", 0) > 0:
        return "Trip delayed"
    return "Trip update"


# --- service alerts ---------------------------------------------------------------------------------------------

def alert_observation(entity: gtfs.FeedEntity, source: str, feed_time: datetime | None,
                      deadline: Deadline | None = None) -> Observation:
    """One service Alert: cause, effect, what it informs about, when it is active, its texts."""
    alert, observation = entity.alert, _base(entity, "service_alert", source, feed_time)
    cause, effect = _enum_name(gtfs.Alert.Cause, alert.cause), _enum_name(gtfs.Alert.Effect, alert.effect)
    observation.event = effect
    periods = [_period(period, entity.id) for period in alert.active_period]
    if periods:
        observation.onset, observation.expires = periods[0]
    if alert.HasField("severity_level"):
        level = _enum_name(gtfs.Alert.SeverityLevel, alert.severity_level)
        observation.severity = CAP_SEVERITY.get(level, "Unknown")
        observation.fields["severity_level"] = level
    _apply_texts(observation, alert)
    _apply_informed_entities(observation, alert, deadline or Deadline())
    observation.fields.update(cause=cause, effect=effect, url=_translation(alert.url)[1],
                              active_periods=[[iso(start), iso(end)] for start, end in periods])
    return observation


def _period(period: gtfs.TimeRange, entity_id: str) -> tuple[datetime | None, datetime | None]:
    # A missing start or end means open-ended on that side.
    start = _posix_time(period.start, f"alert {entity_id} active_period start") if period.start else None
    end = _posix_time(period.end, f"alert {entity_id} active_period end") if period.end else None
    return start, end


def _translation(translated: gtfs.TranslatedString) -> tuple[str, str]:
    """(language, text) of the English translation, else the one without a language, else the first."""
    options = list(translated.translation)
    if not options:
        return "", ""
    # A language that is not valid UTF-8 comes back as bytes; `_checked` refuses it once the entity is read.
    chosen = next((t for t in options if isinstance(t.language, str) and t.language.lower().startswith("en")),
                  next((t for t in options if not t.language), options[0]))
    return chosen.language, chosen.text


def _apply_texts(observation: Observation, alert: gtfs.Alert) -> None:
    language, observation.headline = _translation(alert.header_text)
    observation.description = _translation(alert.description_text)[1]
    observation.language = language or "en"
    for name, translated in (("headline", alert.header_text), ("description", alert.description_text)):
        for translation in translated.translation:
            texts = observation.texts.setdefault(translation.language or observation.language,
                                                 {"headline": "", "description": ""})
            texts[name] = translation.text


def _apply_informed_entities(observation: Observation, alert: gtfs.Alert, deadline: Deadline) -> None:
    selectors = []
    # Dicts as ordered sets: each name listed once, where first seen, without rescanning a list for every entity
    # (which made 300,000 informed entities run for minutes).
    agencies: dict[str, None] = {}
    routes, stops, trips = dict.fromkeys(observation.routes), {}, dict.fromkeys(observation.sailings)
    for selector in deadline.over(alert.informed_entity):
        fields = {name: getattr(selector, name) for name in ("agency_id", "route_id", "stop_id")
                  if selector.HasField(name)}
        if selector.HasField("route_type"):
            fields["route_type"] = selector.route_type
        if selector.trip.trip_id:
            fields["trip_id"] = selector.trip.trip_id
        selectors.append(fields)
        route = fields.get("route_id") or selector.trip.route_id
        for names, value in ((agencies, fields.get("agency_id")), (routes, route), (stops, fields.get("stop_id")),
                             (trips, fields.get("trip_id"))):
            if value:
                names.setdefault(value)
    observation.routes, observation.sailings = list(routes), list(trips)
    # Each selector is an AND of its fields ("route 100 at stop 16299"); the flat lists above lose that.
    observation.fields.update(agencies=list(agencies), stops=list(stops), informed_entities=selectors)
