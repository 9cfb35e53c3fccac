"""Operator data in: the network (YAML) and GTFS schedules, bookings and customers from CSV or JSON Lines with a
column mapping and a rejects file."""
