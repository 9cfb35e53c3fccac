"""Sailing capacities: a sailing's own, or its vessel's (seats per cabin class, vehicles, lane metres, TEU, reefer
plugs), kept as the `sailing_capacities` rows that offers hold places from."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from notifier.store.models import Sailing, SailingCapacity, VesselCapacity


def vessel_capacity(session: Session, vessel_id: int | None) -> dict[str, int]:
    """Space class -> places the vessel offers (empty for no vessel, or one whose capacity nobody gave)."""
    if vessel_id is None:
        return {}
    return dict(session.execute(select(VesselCapacity.space_class, VesselCapacity.capacity)
                                .where(VesselCapacity.vessel_id == vessel_id)).all())


def set_capacity(session: Session, sailing: Sailing, capacity: dict[str, int]) -> None:
    """Set the sailing's places per class; its booked and held counters stay (capacity never below them)."""
    current = {row.space_class: row for row in session.scalars(select(SailingCapacity)
                                                              .where(SailingCapacity.sailing_id == sailing.id))}
    for space_class, places in capacity.items():
        row = current.get(space_class)
        if row is None:
            session.add(SailingCapacity(sailing_id=sailing.id, space_class=space_class, capacity=places, booked=0,
                                        held=0))
        elif row.capacity != places:
            row.capacity = max(places, row.booked + row.held)
