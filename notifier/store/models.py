"""The domain model: network, bookings, the pipeline's rows (feed items -> disruptions -> offers -> outbox) and audit.

Every datetime is timezone-aware UTC in Python; `UTCDateTime` makes SQLite (which has no time zones) behave like
PostgreSQL's timestamptz. Money is Decimal. Each pipeline table carries the unique key from DESIGN.md §2.

One piece, past 500 lines: the tables are one schema. Alembic and every migration read them together, and
splitting them would only spread one set of foreign keys over several files; the status words its columns hold
are in store/status.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (JSON, CheckConstraint, DateTime, ForeignKey, Index, Numeric, String,
                        Text, TypeDecorator, UniqueConstraint, text)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every engine; a naive datetime is refused rather than guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: notifier stores timezone-aware UTC only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Money = Numeric(12, 2, asdecimal=True)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, Decimal: Money, dict[str, Any]: JSON, list[Any]: JSON}


# --- the network -------------------------------------------------------------------------------------------------

class Operator(Base):
    """A shipping line or ferry company whose routes notifier carries (from `notifier import network`)."""

    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))


class Port(Base):
    __tablename__ = "ports"

    id: Mapped[int] = mapped_column(primary_key=True)
    locode: Mapped[str] = mapped_column(String(5), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    name_zh: Mapped[str | None] = mapped_column(String(120))
    country: Mapped[str] = mapped_column(String(2))
    lat: Mapped[float]
    lon: Mapped[float]
    timezone: Mapped[str] = mapped_column(String(64))
    # Marine-zone / UGC / SAME codes that cover this port, e.g. ["UGC:PZZ530"], for geocode matching.
    zone_codes: Mapped[list[Any]] = mapped_column(default=list)
    gtfs_stop_id: Mapped[str | None] = mapped_column(String(64), index=True)


class Route(Base):
    __tablename__ = "routes"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # passenger | cargo
    origin_port_id: Mapped[int] = mapped_column(ForeignKey("ports.id"))
    destination_port_id: Mapped[int] = mapped_column(ForeignKey("ports.id"))
    # Which passenger-rights regime applies: EU (1177/2010), CN, HK, OTHER.
    jurisdiction: Mapped[str] = mapped_column(String(8), default="OTHER")
    gtfs_route_id: Mapped[str | None] = mapped_column(String(64), index=True)
    operator_id: Mapped[int | None] = mapped_column(ForeignKey("operators.id"))
    # The vessel that usually sails the route: a sailing imported without one (GTFS) gets it and its capacities.
    vessel_id: Mapped[int | None] = mapped_column(ForeignKey("vessels.id"))

    origin: Mapped[Port] = relationship(foreign_keys=[origin_port_id])
    destination: Mapped[Port] = relationship(foreign_keys=[destination_port_id])


class Vessel(Base):
    __tablename__ = "vessels"

    id: Mapped[int] = mapped_column(primary_key=True)
    imo: Mapped[str] = mapped_column(String(10), unique=True)
    name: Mapped[str] = mapped_column(String(120))


class VesselCapacity(Base):
    """Places of one kind a vessel offers (seats per cabin class, vehicles, lane metres, TEU, reefer plugs): what
    a sailing of that vessel carries unless the sailing says otherwise."""

    __tablename__ = "vessel_capacities"
    __table_args__ = (UniqueConstraint("vessel_id", "space_class"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    vessel_id: Mapped[int] = mapped_column(ForeignKey("vessels.id"))
    space_class: Mapped[str] = mapped_column(String(32))
    capacity: Mapped[int]


class Sailing(Base):
    __tablename__ = "sailings"
    __table_args__ = (Index("ix_sailings_departure", "scheduled_departure"),
                      Index("ix_sailings_route_departure", "route_id", "scheduled_departure"),
                      Index("ix_sailings_vessel_voyage", "vessel_id", "voyage"))

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    route_id: Mapped[int] = mapped_column(ForeignKey("routes.id"))
    vessel_id: Mapped[int | None] = mapped_column(ForeignKey("vessels.id"))
    voyage: Mapped[str | None] = mapped_column(String(32))
    origin_port_id: Mapped[int] = mapped_column(ForeignKey("ports.id"))
    destination_port_id: Mapped[int] = mapped_column(ForeignKey("ports.id"))
    scheduled_departure: Mapped[datetime]
    scheduled_arrival: Mapped[datetime]
    estimated_departure: Mapped[datetime | None]
    estimated_arrival: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16), default="scheduled")  # scheduled|delayed|cancelled|departed
    gtfs_trip_id: Mapped[str | None] = mapped_column(String(128), index=True)
    # Whether this sailing takes dangerous-goods cargo; a DG booking is only ever offered a sailing that does.
    dangerous_goods_accepted: Mapped[bool] = mapped_column(default=True)

    route: Mapped[Route] = relationship()
    vessel: Mapped[Vessel | None] = relationship()
    origin: Mapped[Port] = relationship(foreign_keys=[origin_port_id])
    destination: Mapped[Port] = relationship(foreign_keys=[destination_port_id])
    capacities: Mapped[list[SailingCapacity]] = relationship(back_populates="sailing")


class SailingCapacity(Base):
    """Places of one kind on one sailing. `booked` and `held` are kept as counters so that a hold is one
    conditional UPDATE (`... WHERE capacity - booked - held >= n`), race-free on SQLite and PostgreSQL."""

    __tablename__ = "sailing_capacities"
    __table_args__ = (UniqueConstraint("sailing_id", "space_class"),
                      CheckConstraint("booked + held <= capacity", name="ck_capacity_not_exceeded"))

    id: Mapped[int] = mapped_column(primary_key=True)
    sailing_id: Mapped[int] = mapped_column(ForeignKey("sailings.id"))
    # Passenger cabin class ("economy", "business"), "vehicle", or cargo "teu" / "reefer".
    space_class: Mapped[str] = mapped_column(String(32))
    capacity: Mapped[int]
    booked: Mapped[int] = mapped_column(default=0)
    held: Mapped[int] = mapped_column(default=0)

    sailing: Mapped[Sailing] = relationship(back_populates="capacities")

    @property
    def free(self) -> int:
        """Places neither booked nor held."""
        return self.capacity - self.booked - self.held


# --- customers and bookings --------------------------------------------------------------------------------------

class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(20), index=True)  # E.164
    email: Mapped[str | None] = mapped_column(String(254), index=True)
    language: Mapped[str] = mapped_column(String(16), default="en")
    # Channels the customer accepts, in order of preference, e.g. ["sms", "email"].
    channels: Mapped[list[Any]] = mapped_column(default=lambda: ["sms", "email"])
    key_account: Mapped[bool] = mapped_column(default=False)
    # The outcome of checking `phone` and `email` (planning.contacts), stored with the values it was made for, so
    # that planning 100,000 notices does not validate 100,000 numbers again; a changed phone or email makes it stale.
    contact_check: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Booking(Base):
    __tablename__ = "bookings"
    # Planning reads a sailing's confirmed bookings of an audience (passengers, cargo) and their accessibility
    # group from this index alone, never from the table's rows.
    __table_args__ = (Index("ix_bookings_sailing_status", "sailing_id", "status", "kind", "accessibility_needs"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[str] = mapped_column(String(32), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # passenger | cargo
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    sailing_id: Mapped[int] = mapped_column(ForeignKey("sailings.id"))
    status: Mapped[str] = mapped_column(String(16), default="confirmed")  # confirmed|rebooked|refund|cancelled
    space_class: Mapped[str] = mapped_column(String(32))  # economy/business... or teu for cargo
    # passenger ticket
    party_size: Mapped[int] = mapped_column(default=1)
    vehicles: Mapped[int] = mapped_column(default=0)
    accessibility_needs: Mapped[bool] = mapped_column(default=False)
    # cargo booking
    containers: Mapped[int] = mapped_column(default=0)
    teu: Mapped[int] = mapped_column(default=0)
    reefer_plugs: Mapped[int] = mapped_column(default=0)
    dangerous_goods: Mapped[bool] = mapped_column(default=False)
    shipper: Mapped[str | None] = mapped_column(String(200))
    cutoffs: Mapped[dict[str, Any]] = mapped_column(default=dict)  # DCSA codes DCO/VCO/FCO... -> ISO time
    # money, as paid
    fare_paid: Mapped[Decimal] = mapped_column(default=Decimal("0"))
    currency: Mapped[str] = mapped_column(String(3))
    # Set when the booking is marked for refund (status "refund"): what finance pays back, in `currency`.
    refund_amount: Mapped[Decimal | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    customer: Mapped[Customer] = relationship()
    sailing: Mapped[Sailing] = relationship()

    @property
    def places(self) -> int:
        """How many places of `space_class` this booking occupies."""
        return self.teu if self.kind == "cargo" else self.party_size


class BookingImport(Base):
    """What `notifier import bookings` knows of a booking beyond its columns: the digest of the row it came from
    (an unchanged row is skipped on the next import without being validated again), the party by passenger type
    and the cargo's commodity."""

    __tablename__ = "booking_imports"

    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"), primary_key=True)
    row_hash: Mapped[str] = mapped_column(String(32))
    party: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"adult": 2, "child": 1}
    commodity: Mapped[str | None] = mapped_column(String(120))
    imported_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- the pipeline --------------------------------------------------------------------------------------------------

class FeedItem(Base):
    """One version of one item from one feed; a re-polled copy hits the unique key and is a no-op."""

    __tablename__ = "feed_items"
    __table_args__ = (UniqueConstraint("source", "external_id", "version"),
                      Index("ix_feed_items_status", "status"))

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(120))
    external_id: Mapped[str] = mapped_column(String(400))
    version: Mapped[str] = mapped_column(String(120))
    format: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(32))
    msg_type: Mapped[str] = mapped_column(String(16), default="Alert")
    references: Mapped[list[Any]] = mapped_column(default=list)
    observation: Mapped[dict[str, Any]] = mapped_column()
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default="new")  # new | processed | failed (store/status.py)
    processed_at: Mapped[datetime | None]
    # Why a stage failed on it ("rules: OverflowError: ..."): the item is quarantined until retried.
    error: Mapped[str | None] = mapped_column(Text)


class FeedSourceState(Base):
    """Health and conditional-GET state of one configured feed source."""

    __tablename__ = "feed_sources"

    name: Mapped[str] = mapped_column(String(120), primary_key=True)
    etag: Mapped[str | None] = mapped_column(String(400))
    last_modified: Mapped[str | None] = mapped_column(String(100))
    last_polled_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    last_error_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    last_feed_timestamp: Mapped[datetime | None]
    # Index feeds (ATOM/RSS of CAP links): entry id -> the <updated> already fetched, so an entry is read once
    # per version.
    index_seen: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # When ops were last warned that this source went silent (one warning per silence, not one per minute).
    stale_warned_at: Mapped[datetime | None]


class FeedError(Base):
    """A feed that could not be read: recorded, shown to ops, never a crash."""

    __tablename__ = "feed_errors"

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(120), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    message: Mapped[str] = mapped_column(Text)


class Disruption(Base):
    """What a hazard does to one sailing. `active_key` is "<sailing>:<kind>" while active and NULL afterwards,
    which gives "unique per (sailing, kind) while active" on every engine."""

    __tablename__ = "disruptions"

    id: Mapped[int] = mapped_column(primary_key=True)
    active_key: Mapped[str | None] = mapped_column(String(80), unique=True)
    sailing_id: Mapped[int] = mapped_column(ForeignKey("sailings.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # cancelled | delayed | port_omitted | advisory | resumed
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | superseded | cleared
    revision: Mapped[int] = mapped_column(default=1)
    planned_revision: Mapped[int] = mapped_column(default=0)
    cause: Mapped[str] = mapped_column(String(64))  # weather | port_closure | strike | technical | schedule ...
    cause_text: Mapped[str] = mapped_column(Text, default="")
    severity: Mapped[str] = mapped_column(String(16), default="Severe")
    delay_minutes: Mapped[int | None]
    window_start: Mapped[datetime | None]
    window_end: Mapped[datetime | None]
    rule_id: Mapped[str | None] = mapped_column(String(120))
    feed_item_id: Mapped[int | None] = mapped_column(ForeignKey("feed_items.id"))
    superseded_by_id: Mapped[int | None] = mapped_column(ForeignKey("disruptions.id"))
    notify: Mapped[dict[str, Any]] = mapped_column(default=dict)  # template, channels, audience, approval
    policy: Mapped[dict[str, Any]] = mapped_column(default=dict)  # entitlements that apply
    # What notices quote beyond the columns: the observation's headline, the omitted port, the kind it replaced
    # ("previous_kind"), the delay customers were last told, and the resumption sailing once cleared.
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    known_at: Mapped[datetime] = mapped_column(default=utcnow)
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    cleared_at: Mapped[datetime | None]

    sailing: Mapped[Sailing] = relationship()


class DisruptionSource(Base):
    """A feed lineage ("source,external_id") that currently asserts a disruption. A CAP Update moves the row to the
    new alert; a Cancel or expiry removes it; the disruption clears when no source is left."""

    __tablename__ = "disruption_sources"
    __table_args__ = (UniqueConstraint("disruption_id", "source_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    disruption_id: Mapped[int] = mapped_column(ForeignKey("disruptions.id"), index=True)
    source_key: Mapped[str] = mapped_column(String(530), index=True)
    feed_item_id: Mapped[int | None] = mapped_column(ForeignKey("feed_items.id"))
    window_end: Mapped[datetime | None]
    asserted_at: Mapped[datetime] = mapped_column(default=utcnow)


class Broadcast(Base):
    """A planned send: automatic (a rule fired) or manual (a duty officer asked)."""

    __tablename__ = "broadcasts"

    id: Mapped[int] = mapped_column(primary_key=True)
    origin: Mapped[str] = mapped_column(String(16))  # automatic | manual
    status: Mapped[str] = mapped_column(String(24), default="planning")
    # planning | awaiting_approval | approved | sending | paused | cancelled | done
    kind: Mapped[str] = mapped_column(String(16))
    template: Mapped[str] = mapped_column(String(64))
    channels: Mapped[list[Any]] = mapped_column(default=lambda: ["sms", "email"])
    audience: Mapped[str] = mapped_column(String(16), default="all")
    reason: Mapped[str | None] = mapped_column(Text)
    target: Mapped[dict[str, Any]] = mapped_column(default=dict)
    needs_approval: Mapped[bool] = mapped_column(default=False)
    created_by: Mapped[str] = mapped_column(String(120))
    approved_by: Mapped[str | None] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    approved_at: Mapped[datetime | None]
    recipient_count: Mapped[int] = mapped_column(default=0)
    # Why planning failed on it (status "failed"): quarantined until `notifier feeds retry --broadcast ID`.
    error: Mapped[str | None] = mapped_column(Text)
    preview: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Offer(Base):
    """One choice put to one booking for one disruption revision: a held rebooking, a refund, or compensation."""

    __tablename__ = "offers"
    __table_args__ = (UniqueConstraint("booking_id", "disruption_id", "revision", "option_key"),
                      Index("ix_offers_status_expiry", "status", "hold_expires_at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    # Offers are found by booking through the unique key, which starts with booking_id (no index of its own).
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"))
    disruption_id: Mapped[int] = mapped_column(ForeignKey("disruptions.id"), index=True)
    revision: Mapped[int]
    option_key: Mapped[str] = mapped_column(String(4))  # "1", "2" ... for rebooking, "R" refund, "C" compensation
    kind: Mapped[str] = mapped_column(String(16))  # rebook | refund | compensation | standby
    sailing_id: Mapped[int | None] = mapped_column(ForeignKey("sailings.id"))
    space_class: Mapped[str | None] = mapped_column(String(32))
    places: Mapped[int] = mapped_column(default=0)
    amount: Mapped[Decimal | None]
    currency: Mapped[str | None] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default="open")  # open|held|accepted|released|expired
    hold_expires_at: Mapped[datetime | None]
    # Places held per space class, e.g. {"economy": 2, "vehicle": 1}: a release gives back exactly these.
    holds: Mapped[dict[str, Any]] = mapped_column(default=dict)
    deadline: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    sailing: Mapped[Sailing | None] = relationship()
    booking: Mapped[Booking] = relationship()


class Notification(Base):
    """The outbox: one notice to one recipient on one channel. `dedup_key` is
    booking:recipient:channel:disruption:revision (DESIGN.md §2) so nothing is ever planned twice."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_claim", "status", "priority", "next_attempt_at"),
                      Index("ix_notifications_broadcast_status", "broadcast_id", "status"),
                      # An SMS reply is matched to the notices sent to its number.
                      Index("ix_notifications_recipient", "recipient"),
                      # Delivery callbacks find a notice by the provider's id, which it has only once sent: the
                      # 100,000 notices a typhoon plans go in without touching this index.
                      Index("ix_notifications_provider_id", "provider_id",
                            sqlite_where=text("provider_id IS NOT NULL"),
                            postgresql_where=text("provider_id IS NOT NULL")))

    id: Mapped[int] = mapped_column(primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(300), unique=True)
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id"), index=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    disruption_id: Mapped[int | None] = mapped_column(ForeignKey("disruptions.id"), index=True)
    revision: Mapped[int] = mapped_column(default=0)
    broadcast_id: Mapped[int | None] = mapped_column(ForeignKey("broadcasts.id"))
    channel: Mapped[str] = mapped_column(String(8))  # sms | email
    recipient: Mapped[str] = mapped_column(String(254))
    language: Mapped[str] = mapped_column(String(16))
    template: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(16), default="notice")  # notice|confirmation|reminder|fallback
    subject: Mapped[str | None] = mapped_column(Text)
    body_text: Mapped[str] = mapped_column(Text)
    body_html: Mapped[str | None] = mapped_column(Text)
    segments: Mapped[int] = mapped_column(default=0)
    safety_critical: Mapped[bool] = mapped_column(default=True)
    # queued|held|sending|sent|delivered|undelivered|failed|suppressed|expired|cancelled
    status: Mapped[str] = mapped_column(String(16), default="queued")
    priority: Mapped[int] = mapped_column(default=0)  # lower goes first: epoch seconds of the departure
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(120))
    provider_id: Mapped[str | None] = mapped_column(String(120))
    message_id: Mapped[str | None] = mapped_column(String(300))
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    final_at: Mapped[datetime | None]


class ProviderCircuit(Base):
    """A provider's circuit breaker as the dispatcher last left it (notifier.delivery.breaker), so `watch
    --status` and the report can say that sending to it is paused, since when and why."""

    __tablename__ = "provider_circuits"

    channel: Mapped[str] = mapped_column(String(8), primary_key=True)  # sms | email
    provider: Mapped[str] = mapped_column(String(32))  # twilio | smtp | file
    state: Mapped[str] = mapped_column(String(16), default="closed")  # closed | open | half-open
    reason: Mapped[str] = mapped_column(Text, default="")
    probe_at: Mapped[datetime | None]  # open: when one notice goes as a probe
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeliveryAttempt(Base):
    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    notification_id: Mapped[int] = mapped_column(ForeignKey("notifications.id"), index=True)
    attempt_no: Mapped[int]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str] = mapped_column(String(16))  # sent | retry | failed | reconciled | callback
    provider_id: Mapped[str | None] = mapped_column(String(120))
    # The provider's own word for a status callback (Twilio: queued, sent, delivered, undelivered, failed ...).
    provider_status: Mapped[str | None] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)


class CustomerResponse(Base):
    """A customer's answer: a choice from the web page or an SMS reply (also free text and scores)."""

    __tablename__ = "customer_responses"
    __table_args__ = (UniqueConstraint("booking_id", "disruption_id", "decision_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id"), index=True)
    disruption_id: Mapped[int | None] = mapped_column(ForeignKey("disruptions.id"))
    offer_id: Mapped[int | None] = mapped_column(ForeignKey("offers.id"))
    channel: Mapped[str] = mapped_column(String(8))  # web | sms | email | agent
    choice: Mapped[str] = mapped_column(String(16))  # rebook | refund | free_text | help | score
    # "choice" for the one decision a booking may take per disruption; NULL (not unique) for free text etc.
    decision_key: Mapped[str | None] = mapped_column(String(16))
    raw_text: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The inbound message's own id (an email's Message-ID): a re-delivered or re-polled reply is recorded once.
    external_id: Mapped[str | None] = mapped_column(String(300), unique=True)


class FollowUp(Base):
    """One booking that needs a person at the customer-service desk, for one reason (notifier.aftercare.followups).

    `source_key` names what raised it (reason, booking, disruption or reply) so a scan never raises it twice;
    `open_key` is "<booking>:<reason>" while open or taken and NULL once done, which gives "one open item per
    booking and reason" on every engine."""

    __tablename__ = "follow_ups"
    __table_args__ = (Index("ix_follow_ups_status", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source_key: Mapped[str] = mapped_column(String(120), unique=True)
    open_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"), index=True)
    disruption_id: Mapped[int | None] = mapped_column(ForeignKey("disruptions.id"), index=True)
    response_id: Mapped[int | None] = mapped_column(ForeignKey("customer_responses.id"))
    reason: Mapped[str] = mapped_column(String(24))  # unreachable | free-text | help | not-carried-out | key-account
    detail: Mapped[str] = mapped_column(Text, default="")  # why, in words; never a contact
    status: Mapped[str] = mapped_column(String(8), default="open")  # open | taken | done
    operator: Mapped[str | None] = mapped_column(String(120))
    outcome: Mapped[str | None] = mapped_column(String(16))  # rebooked | refunded | no-answer | other
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    taken_at: Mapped[datetime | None]
    done_at: Mapped[datetime | None]


class SatisfactionRequest(Base):
    """The one "how did we do, 1-5?" message a customer gets after a disruption is resolved, and the score.
    One per customer and disrupted sailing, whichever of their bookings or disruptions on it resolved first."""

    __tablename__ = "satisfaction_requests"
    __table_args__ = (UniqueConstraint("customer_id", "sailing_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"), index=True)
    disruption_id: Mapped[int] = mapped_column(ForeignKey("disruptions.id"), index=True)
    sailing_id: Mapped[int] = mapped_column(ForeignKey("sailings.id"))
    channel: Mapped[str] = mapped_column(String(8))  # sms | email
    notification_id: Mapped[int | None] = mapped_column(ForeignKey("notifications.id"))
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    score: Mapped[int | None]
    scored_at: Mapped[datetime | None]
    score_channel: Mapped[str | None] = mapped_column(String(8))  # sms | email | web


class OptOut(Base):
    """STOP from a phone (or an unsubscribe from an email address), mirrored from the provider."""

    __tablename__ = "opt_outs"
    __table_args__ = (UniqueConstraint("channel", "address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(8))
    address: Mapped[str] = mapped_column(String(254))
    source: Mapped[str] = mapped_column(String(32))  # sms_stop | twilio_21610 | unsubscribe | agent
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class InboundMessage(Base):
    """An inbound SMS Twilio delivered, by its MessageSid. Twilio signs no timestamp, so a captured request stays
    valid for ever: a MessageSid seen before is answered again but changes nothing, and one first seen longer ago
    than Settings.inbound_replay_window_seconds is refused (notifier.web.inbound)."""

    __tablename__ = "inbound_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_sid: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(8))  # stop | start | help | reply
    sender: Mapped[str] = mapped_column(String(32))  # masked (+86 139****9768): never the number itself
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # What we answered, repeated to a re-delivery; blanked once the window has passed (it may name a booking).
    answer: Mapped[str | None] = mapped_column(Text)


# --- the service desk (notifier.web.desk, notifier.aftercare.tickets) ----------------------------------------------

class Agent(Base):
    """A person at the service desk: signs in to /desk (argon2 hash), acts under this name in the audit log."""

    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # agent | duty | supervisor
    password_hash: Mapped[str] = mapped_column(String(200))
    # Changed at every sign-in and sign-out: a session cookie names it, so an older cookie no longer signs in.
    session_token: Mapped[str | None] = mapped_column(String(64))
    failed_signins: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[datetime | None]
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Ticket(Base):
    """An inquiry, complaint or refund request that came in as an SMS or email that answered no open question.
    `sender` is the address it came from (needed to reply); `customer_id`/`booking_id` are set when found."""

    __tablename__ = "tickets"
    __table_args__ = (Index("ix_tickets_status", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(8))  # sms | email
    sender: Mapped[str] = mapped_column(String(254))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"), index=True)
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id"), index=True)
    category: Mapped[str] = mapped_column(String(16))  # inquiry | complaint | refund | other
    language: Mapped[str] = mapped_column(String(16), default="en")
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(8), default="open")  # open | answered | resolved
    assigned_to: Mapped[str | None] = mapped_column(String(120))
    # The inbound message's own id (MessageSid, Message-ID): a re-delivered message opens one ticket.
    external_id: Mapped[str | None] = mapped_column(String(300), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    due_at: Mapped[datetime]
    first_response_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    resolution: Mapped[str | None] = mapped_column(Text)


class DeskCall(Base):
    """A telephone call an agent logged against a customer (and booking): its outcome and notes."""

    __tablename__ = "desk_calls"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id"))
    agent: Mapped[str] = mapped_column(String(120))
    outcome: Mapped[str] = mapped_column(String(16))  # reached | no-answer | voicemail | other
    note: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    """Who did what, when: operator actions and automatic decisions. Never holds contacts or secrets."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(120))  # operator name, or "watcher", "rules", "dispatcher"
    action: Mapped[str] = mapped_column(String(64))
    subject_type: Mapped[str | None] = mapped_column(String(32))
    subject_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Lock(Base):
    """Leader election on engines without advisory locks: one row per lock with a renewable lease."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(120))
    expires_at: Mapped[datetime]


class WatcherHeartbeat(Base):
    """One row per `notifier watch` process: its role and when it last showed signs of life."""

    __tablename__ = "watcher_heartbeats"

    owner: Mapped[str] = mapped_column(String(120), primary_key=True)  # host:pid
    role: Mapped[str] = mapped_column(String(16))  # leader | standby | stopped
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    beat_at: Mapped[datetime] = mapped_column(default=utcnow)
    # What the last cycle did (jobs run, items, notices sent ...), for `notifier watch --status`.
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
