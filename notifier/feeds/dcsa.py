"""DCSA Operational Vessel Schedules 3.0, Commercial Schedules 1.0 and Track & Trace 2.2 / 3.0 (JSON) -> port call
Observations. Pure: no I/O.

OVS: a list of services -> vesselSchedules -> transportCalls. Each transport call becomes one Observation: its
status (OMIT, BLNK, CUTR ...), its planned / estimated / actual arrival and departure, and the delay of the best
known time (actual, else estimated) against the planned one. A call has no version of its own, so the version is
a digest of its content: re-reading an unchanged schedule creates nothing new.

Commercial Schedules 1.0: vessel schedules have the OVS shape and are read as such; a port schedule (a location
with the vessels calling there, each with its service partners) is read as one transport call per vessel.

T&T 3.0 classifies an event in `eventClassification` (eventTypeCode, eventClassifierCode,
transportEventTypeCode) and nests the call in `transportDetails.transportCall`; it is read into the 2.2 shape.

T&T: a list of events. Only TRANSPORT events (a vessel arriving or departing) matter for sailings; SHIPMENT and
EQUIPMENT events are left out and counted in a note. Events are immutable facts, so the event id is the external
id and its creation time the version.

Code lists are read leniently: an unknown delay reason (the DCSA examples use "TRF", which SMDG does not list)
is kept as given, only without a description.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import datetime
from typing import Any

from notifier.feeds import FeedParseError, Observation
from notifier.feeds.port_status import is_locode
from notifier.feeds.reading import PARSE_SECONDS, Deadline, iso, load_json, parse_time

# SMDG delay reason codes, as curated by DCSA (DCSA-Information-Model smdgdelayreasoncodes.csv, CC0-1.0).
SMDG_DELAY_REASONS = {
    "ACC": "Accident involving personnel (vessel related)",
    "DEV": "Deviation to avoid bad weather",
    "EDD": "Emergency Dry Docking",
    "ENG": "Engine repairs",
    "MVX": "Proforma moves exceeded",
    "PAU": "Vessel detained by port authorities",
    "SPE": "Ship - personnel or equipment not ready or unavailable",
    "STW": "Stowage adjustment",
    "VGR": "Vessel Gear Breakdown",
    "OTV": "Others - Vessel Related",
    "AIP": "Terminal accident involving personnel",
    "ANA": "Authorities not available",
    "BUN": "Bunkering delays",
    "CGS": "Arr OFF Proforma - Berth congestion",
    "CRN": "Crane shortage",
    "FTE": "Failure or unavailability of Terminal equipment",
    "HLD": "Hatch Lids",
    "LAB": "Labor Shortage",
    "LAS": "Lashing delays",
    "LOT": "Labour - Other",
    "MIL": "Military excercise",
    "PBC": "Arr ON Proforma - Berth congestion",
    "PIT": "Pilot / Tug not available",
    "PLT": "Planning at Terminal",
    "PRD": "Low Productivity",
    "QUA": "Quarantine Inspection by Authorities",
    "YRD": "Yard congestion",
    "OTS": "Others - Shore Related",
    "CAE": "Cargo - Awaiting Exports",
    "CIN": "Cargo inspection by Authorities",
    "DIN": "Deficient or inadequate information",
    "LEK": "Leaking Container",
    "REF": "Reefer malfunction",
    "SPH": "Special cargo handling including Dangerous Goods (DG)",
    "STF": "Misstuffed Container",
    "UCC": "Non-containerised (break bulk) or OOG (out of gauge) cargo handling requiring manual intervention",
    "WGT": "Misdeclared Cargo weight",
    "OTC": "Others - Cargo Related",
    "HOL": "Bank Holidays",
    "QUV": "Quarantine Vessel before berthing due to epidemic",
    "PTF": "Port traffic restrictions",
    "RSC": "Save and Rescue",
    "STR": "Strike",
    "TID": "Tidal restrictions",
    "VIN": "Vessel inspections by Coast Guard",
    "WEA": "Bad weather",
    "OTF": "Others - Force Majeure Related",
}
# OVS 3.0 port call status codes (DCSA-OpenAPI portcallstatuscodes-v300.csv) as event names.
PORT_CALL_STATUS_EVENTS = {
    "OMIT": "Port call omitted", "BLNK": "Port call blanked", "ADHO": "Ad hoc port call",
    "PHOT": "Vessel phased out", "PHIN": "Vessel phased in", "ROTC": "Port rotation changed",
    "SLID": "Voyage sliding", "CUTR": "Cut and run",
}
EVENT_TYPES = {"ARRI": "arrival", "DEPA": "departure"}
CLASSIFIERS = {"PLN": "planned", "EST": "estimated", "ACT": "actual", "REQ": "requested"}
# When a call has several timestamps, the one that says most about what will really happen leads.
CLASSIFIER_RANK = {"REQ": 0, "PLN": 1, "EST": 2, "ACT": 3}


def parse(data: bytes, source: str = "", notes: list[str] | None = None,
          seconds: float = PARSE_SECONDS) -> list[Observation]:
    """Parse an OVS 3.0 schedule or a T&T 2.2 event list into port call Observations."""
    deadline = Deadline(seconds)
    document = load_json(data, what="DCSA feed")
    if isinstance(document, dict):
        document = document.get("services", document.get("events", [document]))
    if not isinstance(document, list):
        raise FeedParseError("DCSA feed must be a JSON list of services (OVS) or of events (T&T)")
    publisher = source or "dcsa"
    observations, left_out = [], Counter()
    for number, record in enumerate(deadline.over(document), 1):
        if not isinstance(record, dict):
            raise FeedParseError(f"DCSA record {number} is not a JSON object")
        if "vesselSchedules" in record and "location" in record and "carrierServiceCode" not in record:
            observations.extend(port_schedule_observations(record, publisher, deadline))
        elif "vesselSchedules" in record:
            observations.extend(service_observations(record, publisher, deadline))
        elif "eventClassification" in record:
            event_type = _text(_object(record["eventClassification"], f"DCSA event {number}: eventClassification"),
                               "eventTypeCode", f"DCSA event {number}")
            if event_type == "TRANSPORT":
                observations.append(transport_event_observation(_as_tnt_22(record), publisher))
            else:
                left_out[event_type[:20] or "unclassified"] += 1
        elif "eventType" in record:
            if record["eventType"] == "TRANSPORT":
                observations.append(transport_event_observation(record, publisher))
            else:
                left_out[str(record["eventType"])[:20]] += 1
        else:
            raise FeedParseError(f"DCSA record {number} is neither a schedule (vesselSchedules) nor a T&T "
                                 "event (eventType, eventClassification)")
    if left_out and notes is not None:
        notes.extend(f"{count} {kind} events left out: not relevant to sailings"
                     for kind, count in sorted(left_out.items()))
    return observations


# --- reading JSON safely ----------------------------------------------------------------------------------------

def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FeedParseError(f"{what} should be a JSON object")
    return value


def _objects(value: Any, what: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise FeedParseError(f"{what} should be a JSON list")
    return [_object(item, what) for item in value]


def _text(record: dict[str, Any], key: str, what: str) -> str:
    value = record.get(key)
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # IMO numbers and sequence numbers sometimes come as numbers
    if not isinstance(value, str):
        raise FeedParseError(f"{what}: {key} should be text, not {type(value).__name__}")
    return value.strip()


def _locode(value: str, what: str) -> list[str]:
    if not value:
        return []
    if not is_locode(value):
        raise FeedParseError(f"{what}: UNLocationCode {value[:20]!r} is not a UN/LOCODE (like NLRTM)")
    return [value]


# --- OVS 3.0 ----------------------------------------------------------------------------------------------------

def service_observations(service: dict[str, Any], source: str, deadline: Deadline | None = None) -> list[Observation]:
    """Every transport call of every vessel schedule of one OVS service."""
    deadline = deadline or Deadline()
    code = _text(service, "carrierServiceCode", "OVS service")
    where = f"OVS service {code or _text(service, 'carrierServiceName', 'OVS service')}"
    observations = []
    for schedule in _objects(service.get("vesselSchedules"), f"{where}: vesselSchedules"):
        for call in deadline.over(_objects(schedule.get("transportCalls"), f"{where}: transportCalls")):
            observations.append(transport_call_observation(service, schedule, call, source, deadline))
    return observations


def transport_call_observation(service: dict[str, Any], schedule: dict[str, Any], call: dict[str, Any],
                               source: str, deadline: Deadline | None = None) -> Observation:
    """One OVS transport call: status, planned/estimated/actual times, delay and its reason."""
    service_code = _text(service, "carrierServiceCode", "OVS service")
    imo = _text(schedule, "vesselIMONumber", "OVS vessel schedule")
    location = _object(call.get("location"), "OVS transport call location")
    locode = _text(location, "UNLocationCode", "OVS transport call location")
    import_voyage = _text(call, "carrierImportVoyageNumber", "OVS transport call")
    export_voyage = _text(call, "carrierExportVoyageNumber", "OVS transport call")
    call_id = (_text(call, "transportCallReference", "OVS transport call")
               or f"{service_code}/{imo}/{export_voyage or import_voyage}/{locode}")
    where = f"OVS transport call {call_id[:60]}"
    listed = _objects(call.get("timestamps"), f"{where}: timestamps")
    timestamps = [_timestamp(t, where) for t in (deadline or Deadline()).over(listed)]
    status = _text(call, "statusCode", where)
    lead = max(timestamps, key=lambda t: (CLASSIFIER_RANK.get(t["classifier"], -1), t["event_type"] == "DEPA"),
               default=None)
    times = _times_by_kind(timestamps)
    observation = Observation(
        source=source, format="dcsa", kind="port_call", external_id=call_id,
        version=_digest(service_code, imo, call), event=_call_event(status, lead),
        ports=_locode(locode, where), sailings=_unique(import_voyage, export_voyage), routes=_unique(service_code),
        onset=_best(times, "arrival") or _best(times, "departure"), expires=_best(times, "departure"))
    observation.fields.update(
        vessel_imo=imo, vessel_name=_text(schedule, "vesselName", where), service_code=service_code,
        service_name=_text(service, "carrierServiceName", where),
        carrier_voyage=_voyage(import_voyage, export_voyage), import_voyage=import_voyage,
        export_voyage=export_voyage, port_call_status=status or None,
        port_visit_reference=_text(call, "portVisitReference", where),
        facility_smdg_code=_text(location, "facilitySMDGCode", where) or _smdg_facility(location, where),
        location_name=_text(location, "locationName", where),
        event_type=lead["event_type"] if lead else None, classifier=lead["classifier"] if lead else None,
        timestamps=[{k: iso(v) if isinstance(v, datetime) else v for k, v in t.items()} for t in timestamps],
        **_time_fields(times))
    _apply_delay_reason(observation, _first(timestamps, lead, "delay_reason_code"),
                        _first(timestamps, lead, "change_remark"))
    delay = _delay_minutes(times)
    if delay is not None:
        observation.fields["delay_minutes"] = delay
    observation.headline = _headline(observation)
    return observation


def _smdg_facility(location: dict[str, Any], where: str) -> str:
    """A terminal given as CS 1.0 writes it: {"facilityCode": ..., "facilityCodeListProvider": "SMDG"}."""
    facility = _object(location.get("facility"), f"{where}: facility")
    if _text(facility, "facilityCodeListProvider", where) != "SMDG":
        return ""
    return _text(facility, "facilityCode", where)


# --- Commercial Schedules 1.0 port schedules ---------------------------------------------------------------------

def port_schedule_observations(port: dict[str, Any], source: str,
                               deadline: Deadline | None = None) -> list[Observation]:
    """Every vessel calling at one CS 1.0 port schedule's location, read as an OVS transport call."""
    deadline = deadline or Deadline()
    location = _object(port.get("location"), "CS port schedule location")
    where = f"CS port schedule {_text(location, 'UNLocationCode', 'CS port schedule location')}"
    observations = []
    for vessel in deadline.over(_objects(port.get("vesselSchedules"), f"{where}: vesselSchedules")):
        partners = _objects(vessel.get("servicePartners"), f"{where}: servicePartners")
        partner = partners[0] if partners else {}
        service = {"carrierServiceCode": partner.get("carrierServiceCode"),
                   "carrierServiceName": partner.get("carrierServiceName")}
        call = {"transportCallReference": vessel.get("transportCallReference"), "location": location,
                "carrierImportVoyageNumber": partner.get("carrierImportVoyageNumber"),
                "carrierExportVoyageNumber": partner.get("carrierExportVoyageNumber"),
                "statusCode": vessel.get("statusCode"), "timestamps": vessel.get("timestamps")}
        observations.append(transport_call_observation(service, vessel, call, source, deadline))
    return observations


def _timestamp(timestamp: dict[str, Any], where: str) -> dict[str, Any]:
    moment = parse_time(timestamp.get("eventDateTime"), f"{where}: eventDateTime")
    if moment is None:
        raise FeedParseError(f"{where}: a timestamp has no eventDateTime")
    return {"event_type": _text(timestamp, "eventTypeCode", where),
            "classifier": _text(timestamp, "eventClassifierCode", where), "time": moment,
            "delay_reason_code": _text(timestamp, "delayReasonCode", where),
            "change_remark": _text(timestamp, "changeRemark", where)}


def _first(timestamps: list[dict[str, Any]], lead: dict[str, Any] | None, key: str) -> str:
    """The leading timestamp's value, else the first timestamp's that has one (reasons are not repeated)."""
    return next((t[key] for t in ([lead] if lead else []) + timestamps if t[key]), "")


def _times_by_kind(timestamps: list[dict[str, Any]]) -> dict[str, datetime]:
    """{"planned_arrival": t, "estimated_departure": t, ...}; for a repeated kind the latest-listed wins."""
    times = {}
    for timestamp in timestamps:
        event, classifier = EVENT_TYPES.get(timestamp["event_type"]), CLASSIFIERS.get(timestamp["classifier"])
        if event and classifier:
            times[f"{classifier}_{event}"] = timestamp["time"]
    return times


def _time_fields(times: dict[str, datetime]) -> dict[str, str | None]:
    """All six of planned/estimated/actual x arrival/departure, None where unknown, so rules see one shape."""
    return {f"{classifier}_{event}": iso(times.get(f"{classifier}_{event}"))
            for classifier in ("planned", "estimated", "actual") for event in EVENT_TYPES.values()}


def _best(times: dict[str, datetime], event: str) -> datetime | None:
    return times.get(f"actual_{event}") or times.get(f"estimated_{event}") or times.get(f"planned_{event}")


def _delay_minutes(times: dict[str, datetime]) -> int | None:
    # The delay a customer notices: the best known time (actual, else estimated) against the planned one.
    delays = []
    for event in EVENT_TYPES.values():
        planned = times.get(f"planned_{event}")
        known = times.get(f"actual_{event}") or times.get(f"estimated_{event}")
        if planned and known:
            delays.append(int((known - planned).total_seconds() + 30) // 60)  # half a minute rounds up
    return max(delays) if delays else None


def _call_event(status: str, lead: dict[str, Any] | None) -> str:
    if status:
        return PORT_CALL_STATUS_EVENTS.get(status, f"Port call status {status}")
    if lead and lead["event_type"] in EVENT_TYPES:
        return _event_name(lead["event_type"], lead["classifier"])
    return "Port call"


def _digest(*parts: Any) -> str:
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # "surrogatepass": a JSON "\ud800" escape must not crash the digest; check_storable refuses it with a reason.
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:16]


# --- T&T 2.2 ----------------------------------------------------------------------------------------------------

def transport_event_observation(event: dict[str, Any], source: str) -> Observation:
    """One T&T TRANSPORT event: a vessel's planned, estimated or actual arrival or departure at a call."""
    event_id = _text(event, "eventID", "T&T event")
    if not event_id:
        raise FeedParseError("T&T TRANSPORT event has no eventID")
    where = f"T&T event {event_id[:60]}"
    created = parse_time(event.get("eventCreatedDateTime"), f"{where}: eventCreatedDateTime")
    moment = parse_time(event.get("eventDateTime"), f"{where}: eventDateTime")
    if moment is None:
        raise FeedParseError(f"{where} has no eventDateTime")
    call = _object(event.get("transportCall"), f"{where}: transportCall")
    vessel = _object(call.get("vessel"), f"{where}: vessel")
    location = _object(call.get("location"), f"{where}: location")
    event_type = _text(event, "transportEventTypeCode", where)
    classifier = _text(event, "eventClassifierCode", where)
    import_voyage = _text(call, "importVoyageNumber", where)
    export_voyage = _text(call, "exportVoyageNumber", where)
    locode = _text(call, "UNLocationCode", where) or _text(location, "UNLocationCode", where)
    service_code = _text(call, "carrierServiceCode", where)
    observation = Observation(
        source=source, format="dcsa", kind="port_call", external_id=event_id,
        version=(created or moment).isoformat(), event=_event_name(event_type, classifier), sent=created,
        onset=moment, ports=_locode(locode, where), sailings=_unique(import_voyage, export_voyage),
        routes=_unique(service_code))
    observation.fields.update(
        vessel_imo=_text(vessel, "vesselIMONumber", where), vessel_name=_text(vessel, "vesselName", where),
        service_code=service_code, carrier_voyage=_voyage(import_voyage, export_voyage),
        import_voyage=import_voyage, export_voyage=export_voyage, event_type=event_type, classifier=classifier,
        event_time=iso(moment), transport_call_id=_text(call, "transportCallID", where),
        facility_code=_text(call, "facilityCode", where), port_call_status=None)
    observation.fields.update(_time_fields(_times_by_kind([{"event_type": event_type, "classifier": classifier,
                                                            "time": moment}])))
    _apply_delay_reason(observation, _text(event, "delayReasonCode", where), _text(event, "changeRemark", where))
    observation.headline = _headline(observation)
    return observation


def _as_tnt_22(event: dict[str, Any]) -> dict[str, Any]:
    """A T&T 3.0 TRANSPORT event in the 2.2 shape: the classification flattened, the call out of transportDetails."""
    where = f"T&T event {_text(event, 'eventID', 'T&T event')[:60]}"
    classification = _object(event.get("eventClassification"), f"{where}: eventClassification")
    details = _object(event.get("transportDetails"), f"{where}: transportDetails")
    call = dict(_object(details.get("transportCall") or event.get("transportCall"), f"{where}: transportCall"))
    call.setdefault("location", event.get("eventLocation"))

    def either(key: str) -> Any:
        return classification.get(key) if classification.get(key) is not None else event.get(key)

    return {"eventID": event.get("eventID"), "eventDateTime": event.get("eventDateTime"),
            "eventCreatedDateTime": event.get("eventUpdatedDateTime") or event.get("eventCreatedDateTime"),
            "transportEventTypeCode": either("transportEventTypeCode"),
            "eventClassifierCode": either("eventClassifierCode"), "delayReasonCode": either("delayReasonCode"),
            "changeRemark": either("changeRemark"), "transportCall": call}


# --- shared -----------------------------------------------------------------------------------------------------

def _event_name(event_type: str, classifier: str) -> str:
    """'ARRI', 'EST' -> 'Vessel arrival (estimated)'."""
    what = EVENT_TYPES.get(event_type, event_type or "event")
    return f"Vessel {what} ({CLASSIFIERS.get(classifier, classifier or 'unclassified')})"


def _apply_delay_reason(observation: Observation, code: str, remark: str) -> None:
    observation.fields["delay_reason_code"] = code or None
    observation.fields["delay_reason"] = SMDG_DELAY_REASONS.get(code) if code else None
    observation.fields["change_remark"] = remark
    observation.description = remark or observation.fields["delay_reason"] or ""


def _headline(observation: Observation) -> str:
    fields = observation.fields
    vessel = fields["vessel_name"] or (f"IMO {fields['vessel_imo']}" if fields["vessel_imo"] else "vessel")
    port = observation.ports[0] if observation.ports else "an unnamed port"
    voyage = f" voyage {fields['carrier_voyage']}" if fields["carrier_voyage"] else ""
    return f"{observation.event}: {vessel}{voyage} at {port}"


def _voyage(import_voyage: str, export_voyage: str) -> str:
    """The carrier voyage as staff write it: '2103N/2103S', or the one number when both are the same."""
    return "/".join(_unique(import_voyage, export_voyage))


def _unique(*values: str) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))
