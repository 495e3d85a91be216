"""A Snowplow enriched event as one flat record, from either shape it travels in.

Snowplow's Enrich writes each event as one line of 131 tab-separated fields (the order
below is the published one, the same in every analytics SDK). Its self-describing parts,
`contexts`, `derived_contexts` and `unstruct_event`, are JSON inside their fields. The
analytics SDKs turn such a line into JSON by field name, each entity under a column
named from its schema: `contexts_<vendor>_<name>_<model>` holds the list of every
entity of that schema and `unstruct_event_<vendor>_<name>_<model>` the event's own data,
with dots and dashes as `_` and the name's CamelCase as snake_case
(`iglu:org.w3/PerformanceTiming/jsonschema/1-0-0` is `contexts_org_w3_performance_timing_1`).

Both shapes become that flat dict here: the TSV's fields by name, with its JSON fields
flattened; the SDK's JSON as it is (with any self-describing field still nested, as the
Scala SDK's non-flattening output has it, flattened too). Empty fields are left out.
"""

from __future__ import annotations

import re
from typing import Any, Final

from schemas import errors
from schemas.bounds import Bounds, loads, out_of_bounds
from schemas.errors import InvalidEvent

ENRICHED_FIELDS: Final = (
    "app_id", "platform", "etl_tstamp", "collector_tstamp", "dvce_created_tstamp",
    "event", "event_id", "txn_id", "name_tracker", "v_tracker", "v_collector", "v_etl",
    "user_id", "user_ipaddress", "user_fingerprint", "domain_userid", "domain_sessionidx",
    "network_userid", "geo_country", "geo_region", "geo_city", "geo_zipcode",
    "geo_latitude", "geo_longitude", "geo_region_name", "ip_isp", "ip_organization",
    "ip_domain", "ip_netspeed", "page_url", "page_title", "page_referrer",
    "page_urlscheme", "page_urlhost", "page_urlport", "page_urlpath", "page_urlquery",
    "page_urlfragment", "refr_urlscheme", "refr_urlhost", "refr_urlport", "refr_urlpath",
    "refr_urlquery", "refr_urlfragment", "refr_medium", "refr_source", "refr_term",
    "mkt_medium", "mkt_source", "mkt_term", "mkt_content", "mkt_campaign", "contexts",
    "se_category", "se_action", "se_label", "se_property", "se_value", "unstruct_event",
    "tr_orderid", "tr_affiliation", "tr_total", "tr_tax", "tr_shipping", "tr_city",
    "tr_state", "tr_country", "ti_orderid", "ti_sku", "ti_name", "ti_category",
    "ti_price", "ti_quantity", "pp_xoffset_min", "pp_xoffset_max", "pp_yoffset_min",
    "pp_yoffset_max", "useragent", "br_name", "br_family", "br_version", "br_type",
    "br_renderengine", "br_lang", "br_features_pdf", "br_features_flash",
    "br_features_java", "br_features_director", "br_features_quicktime",
    "br_features_realplayer", "br_features_windowsmedia", "br_features_gears",
    "br_features_silverlight", "br_cookies", "br_colordepth", "br_viewwidth",
    "br_viewheight", "os_name", "os_family", "os_manufacturer", "os_timezone",
    "dvce_type", "dvce_ismobile", "dvce_screenwidth", "dvce_screenheight", "doc_charset",
    "doc_width", "doc_height", "tr_currency", "tr_total_base", "tr_tax_base",
    "tr_shipping_base", "ti_currency", "ti_price_base", "base_currency", "geo_timezone",
    "mkt_clickid", "mkt_network", "etl_tags", "dvce_sent_tstamp", "refr_domain_userid",
    "refr_dvce_tstamp", "derived_contexts", "domain_sessionid", "derived_tstamp",
    "event_vendor", "event_name", "event_format", "event_version", "event_fingerprint",
    "true_tstamp",
)  # fmt: skip
FIELD_COUNT: Final = len(ENRICHED_FIELDS)  # 131
CONTEXT_FIELDS: Final = ("contexts", "derived_contexts")  # lists of entities
UNSTRUCT_FIELD: Final = "unstruct_event"  # one self-describing event
UNSTRUCT_PREFIX: Final = "unstruct_event_"
CONTEXTS_PREFIX: Final = "contexts_"
SCHEMA_VERSION_KEY: Final = "_schema_version"  # the Scala SDK adds it to each entity

# iglu:<vendor>/<name>/<format>/<model>-<revision>-<addition>
_SCHEMA_URI: Final = re.compile(
    r"iglu:([a-zA-Z0-9_.-]+)/([a-zA-Z0-9_-]+)/[a-zA-Z0-9_-]+/([1-9][0-9]*)-[0-9]+-[0-9]+"
)
_DOT_OR_DASH: Final = re.compile(r"[.-]")
_CAMEL_HUMP: Final = re.compile(r"([^A-Z_])([A-Z])")


def column(prefix: str, vendor: str, name: str, model: int | str) -> str:
    """The SDKs' column of a schema: `column("contexts_", "org.w3", "PerformanceTiming", 1)`
    is `contexts_org_w3_performance_timing_1`."""
    snake_vendor = _DOT_OR_DASH.sub("_", vendor).lower()
    snake_name = _CAMEL_HUMP.sub(r"\1_\2", _DOT_OR_DASH.sub("_", name)).lower()
    return f"{prefix}{snake_vendor}_{snake_name}_{model}"


def _column_of(prefix: str, entity: Any, field: str, reason: str) -> tuple[str, Any]:
    """An entity's column and data; `reason` when it is no self-describing JSON."""
    schema = entity.get("schema") if isinstance(entity, dict) else None
    match = _SCHEMA_URI.fullmatch(schema) if isinstance(schema, str) else None
    if match is None or "data" not in entity:
        raise InvalidEvent(
            reason, f"snowplow: an entity of {field} is no {{schema: iglu:..., data}} object"
        )
    vendor, name, model = match.groups()
    return column(prefix, vendor, name, model), entity["data"]


def flatten(field: str, envelope: Any, reason: str) -> dict[str, Any]:
    """The columns of one self-describing field, given as its JSON value: the entities of
    `contexts`/`derived_contexts` grouped by column, or the one event of `unstruct_event`."""
    data = envelope.get("data") if isinstance(envelope, dict) else None
    if field == UNSTRUCT_FIELD:
        name, value = _column_of(UNSTRUCT_PREFIX, data, field, reason)
        return {name: value}
    if not isinstance(data, list):
        raise InvalidEvent(reason, f"snowplow: {field} is no {{schema, data: [...]}} object")
    columns: dict[str, list[Any]] = {}
    for entity in data:
        name, value = _column_of(CONTEXTS_PREFIX, entity, field, reason)
        columns.setdefault(name, []).append(value)
    return dict(columns)


def from_tsv(line: str, bounds: Bounds) -> dict[str, Any]:
    """The record of one enriched TSV line; `malformed_line` when it is none."""
    values = line.rstrip("\r\n").split("\t")
    if len(values) != FIELD_COUNT:
        raise InvalidEvent(
            errors.MALFORMED_LINE,
            f"snowplow: expected {FIELD_COUNT} tab-separated fields, got {len(values)}",
        )
    record: dict[str, Any] = {}
    for name, value in zip(ENRICHED_FIELDS, values, strict=True):
        if not value:
            continue
        if name in CONTEXT_FIELDS or name == UNSTRUCT_FIELD:
            try:
                envelope = loads(value, bounds)
            except InvalidEvent as exc:
                if exc.reason != errors.MALFORMED_JSON:
                    raise  # past a bound
                detail = f"snowplow: {name} is not JSON ({exc.detail})"
                raise InvalidEvent(errors.MALFORMED_LINE, detail) from exc
            record.update(flatten(name, envelope, errors.MALFORMED_LINE))
        elif len(value) > bounds.max_string_chars:
            raise out_of_bounds(
                f"snowplow: {name} of {len(value)} characters is over {bounds.max_string_chars}"
            )
        else:
            record[name] = value
    return record


def from_json(obj: dict[str, Any]) -> dict[str, Any]:
    """The record of the SDK's JSON: as it is, nulls and empty text left out, a nested
    self-describing field flattened."""
    record = {key: value for key, value in obj.items() if value is not None and value != ""}
    for name in (*CONTEXT_FIELDS, UNSTRUCT_FIELD):
        envelope = record.pop(name, None)
        if envelope is not None and envelope != {}:
            record.update(flatten(name, envelope, errors.INVALID_EVENT))
    return record


def entities(record: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The entities of context column `name` (none when absent); `invalid_event` when the
    column is not a list of objects."""
    value = record.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise InvalidEvent(errors.INVALID_EVENT, f"snowplow: {name} must be a list of objects")
    return [{k: v for k, v in item.items() if k != SCHEMA_VERSION_KEY} for item in value]
