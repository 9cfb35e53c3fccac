"""A reservation system's export, read as it is: the column mapping file (`--map mapping.yaml`).

Every reservation system names and spells its columns its own way. The mapping says, for one system, which of
its columns holds each of our fields (`columns`), values to use for fields the export lacks (`constants`), how its
values translate to ours (`values`, e.g. status "OK" -> "confirmed"), how it writes a departure (`date_format`,
strptime), the region for phone numbers written without a country code (`default_region`), and the file's
`format`, `encoding` and CSV `delimiter`. schemas/README.md documents it with an example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from notifier.errors import UsageError
from notifier.intake.sources import read_yaml

MAX_MAPPING_BYTES = 1_000_000
FIELDS = ("booking_ref", "sailing", "route", "departure", "status", "kind", "space_class", "passengers_adult",
          "passengers_child", "passengers_infant", "passengers_senior", "vehicles", "accessibility_needs",
          "fare_paid", "currency", "teu", "containers", "reefer_plugs", "dangerous_goods", "commodity", "shipper",
          "key_account", "customer_ref", "customer_name", "customer_phone", "customer_email", "customer_language",
          "consent_sms", "consent_email")


@dataclass(frozen=True)
class Mapping:
    """How one reservation system's export maps onto our booking fields."""

    columns: dict[str, str] = field(default_factory=dict)  # our field -> their column
    constants: dict[str, Any] = field(default_factory=dict)
    values: dict[str, dict[str, Any]] = field(default_factory=dict)  # our field -> {their value: ours}
    date_format: str | None = None
    default_region: str | None = None
    format: str | None = None
    encoding: str = "utf-8"
    delimiter: str = ","

    def apply(self, row: dict[str, Any]) -> dict[str, Any]:
        """Their row as our fields: renamed, constants filled in, values translated (no checking here)."""
        ours = {}
        for name, column, constant, translate in self._plan:
            value = row.get(column)
            if value is None or value == "":
                value = constant
            if translate and isinstance(value, str | int | bool) and str(value) in translate:
                value = translate[str(value)]
            if value is not None and value != "":
                ours[name] = value
        return ours

    @cached_property
    def _plan(self) -> tuple[tuple[str, str, Any, dict[str, Any] | None], ...]:
        # Worked out once per import, not once per row of a million.
        return tuple((name, self.columns.get(name, name), self.constants.get(name), self.values.get(name))
                     for name in FIELDS)


def load_mapping(path: str | Path | None) -> Mapping:
    """The mapping file's contents, checked; no file means our own field names, UTF-8 and commas."""
    if path is None:
        return Mapping()
    path = Path(path)
    return _checked(read_yaml(path, MAX_MAPPING_BYTES) or {}, path)


def _checked(raw: Any, path: Path) -> Mapping:
    known = {"columns", "rename", "constants", "values", "date_format", "default_region", "format", "encoding",
             "delimiter"}
    if not isinstance(raw, dict) or set(raw) - known:
        unknown = ", ".join(sorted(map(str, set(raw) - known))) if isinstance(raw, dict) else "not a mapping"
        raise UsageError(f"{path}: unknown key(s) {unknown}; known are {', '.join(sorted(known))}")
    columns = _table(raw.get("columns") or raw.get("rename") or {}, path, "columns")
    constants = _table(raw.get("constants") or {}, path, "constants")
    values = _table(raw.get("values") or {}, path, "values")
    for name, table in values.items():
        if not isinstance(table, dict):
            raise UsageError(f"{path}: values.{name} must map their values to ours")
    values = {name: {str(k): v for k, v in table.items()} for name, table in values.items()}
    delimiter = str(raw.get("delimiter", ","))
    if len(delimiter) != 1:
        raise UsageError(f"{path}: delimiter must be one character, not {delimiter!r}")
    region = raw.get("default_region")
    if region is not None and not (isinstance(region, str) and len(region) == 2 and region.isalpha()):
        raise UsageError(f"{path}: default_region must be an ISO 3166 country code such as GB, not {region!r}")
    return Mapping(columns={k: str(v) for k, v in columns.items()}, constants=constants, values=values,
                   date_format=raw.get("date_format"), default_region=region.upper() if region else None,
                   format=raw.get("format"), encoding=str(raw.get("encoding", "utf-8")), delimiter=delimiter)


def _table(value: Any, path: Path, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError(f"{path}: {key} must be a mapping of our field names")
    unknown = sorted(str(name) for name in value if name not in FIELDS)
    if unknown:
        raise UsageError(f"{path}: {key} names unknown field(s) {', '.join(unknown)}; "
                         "the fields are listed in schemas/booking.schema.json")
    return dict(value)
