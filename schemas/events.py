"""The canonical clickstream event (docs/architecture.md, "Canonical event").

Every input format is mapped onto this one model; everything downstream sees only it.
Frozen, validated once at the edge. When the producer gives no `event_id`, one is
derived from the event's content, so replaying a file yields the same ids.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

EventType = Literal[
    "page_view",
    "product_view",
    "category_view",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "cart_view",
    "checkout_started",
    "checkout_step",
    "purchase",
    "wishlist_add",
    "variant_selected",
    "discount_applied",
    "email_open",
    "email_click",
    "sms_click",
    "ad_click",
    "support_chat_started",
    "signup",
    "opt_out",
    "email_bounce",
    "spam_complaint",
    "consent_update",
    "custom",
    "identify",
    "alias",
]
PageType = Literal[
    "home",
    "blog",
    "category",
    "product",
    "pricing",
    "shipping",
    "returns",
    "faq",
    "spec_sheet",
    "size_guide",
    "landing",
    "other",
]
EVENT_TYPES: Final[frozenset[str]] = frozenset(get_args(EventType))
PAGE_TYPES: Final[frozenset[str]] = frozenset(get_args(PageType))

ID_MAX_LENGTH: Final = 256  # ids longer than this are not ids; they would bloat Redis keys
CUSTOM: Final = "custom"  # the type of an event outside the fixed types, told apart by its name
CUSTOM_NEEDS_NAME: Final = (
    'a custom event needs a name, the event as the source calls it: "name": "Pop-up Email Accepted"'
)
# The types that link two ids of one shopper: `anonymous_id` joins `shopper_id`.
IDENTIFY: Final = "identify"  # an anonymous id becomes known (Segment identify)
ALIAS: Final = "alias"  # a previous id, known or not, joins shopper_id (Segment alias)
IDENTITY_TYPES: Final = frozenset({IDENTIFY, ALIAS})
IDENTITY_NEEDS_ANONYMOUS_ID: Final = (
    "an identify or alias event needs the id it links to shopper_id in anonymous_id: "
    '"anonymous_id": "anon-7"'
)
IDENTITY_NEEDS_TWO_IDS: Final = (
    "an identify or alias event links two ids: its anonymous_id must differ from its shopper_id"
)


def as_id(value: Any) -> Any:
    """Ids given as numbers (common in exports) become strings; whitespace is stripped."""
    if isinstance(value, bool):
        return value  # pydantic rejects it as a string
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value.strip()
    return value


Id = Annotated[str, BeforeValidator(as_id), Field(min_length=1, max_length=ID_MAX_LENGTH)]


class Page(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    type: PageType = "other"
    url: str | None = None


class Product(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    sku: Id
    category: str | None = None
    price: float | None = Field(default=None, ge=0)
    variant: str | None = None
    brand: str | None = None
    name: str | None = None
    quantity: int | None = Field(default=None, ge=0)

    @field_validator("category", "variant", "brand", "name", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and not value.strip():
            return None
        return value


class Event(BaseModel):
    """One clickstream event in canonical form.

    `type` is one of the fixed types, or `custom` for any other event the source sends
    (a Segment track call outside the spec, a GA4 event with no canonical type); a
    custom event carries the source's event name in `name`. An `identify` or `alias`
    event links two ids of one shopper: its `anonymous_id` joins its `shopper_id`
    (docs/identity.md).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: Id | None = None
    shopper_id: Id
    anonymous_id: Id | None = None
    """The anonymous id the source gave beside the known one, for identity stitching
    (Segment's `anonymousId` beside its `userId`, GA4's `user_pseudo_id` or `client_id`
    beside its `user_id`, Snowplow's `domain_userid` beside its `user_id`); on an
    `identify` or `alias` event, the id it links to `shopper_id` (required there, and
    never `shopper_id` itself). None when `shopper_id` is itself the anonymous id."""
    session_id: Id | None = None
    type: EventType
    ts: datetime
    page: Page | None = None
    product: Product | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
    name: str | None = None
    """The event's name as the source gave it (`"Pop-up Email Accepted"`, `"sign_up"`).
    Required when `type` is `custom`; set on the events mapped to `signup` too, so a rule
    can tell a popup's email capture from an account creation. A rule matches it as
    `name`."""
    identified: bool | None = None
    """True when `shopper_id` is the source's known user id (Segment `userId`, GA4
    `user_id`, Snowplow `user_id`) rather than a device or cookie id; None when the
    source does not say (a canonical event that leaves it out). Not part of the derived
    `event_id`."""
    # Which input format this came from (canonical, segment, ga4, rees46, ...). Added
    # field; used for metrics by source format and for debugging.
    source: str = "canonical"

    @field_validator("ts")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # A timestamp without zone is taken as UTC, the only sane default for logs.
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    @field_validator("name", mode="before")
    @classmethod
    def _blank_name_is_none(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip() or None
        return value

    @model_validator(mode="after")
    def _derive(self) -> Event:
        if self.type == CUSTOM and self.name is None:
            raise ValueError(CUSTOM_NEEDS_NAME)
        if self.type in IDENTITY_TYPES:
            if self.anonymous_id is None:
                raise ValueError(IDENTITY_NEEDS_ANONYMOUS_ID)
            if self.anonymous_id == self.shopper_id:
                raise ValueError(IDENTITY_NEEDS_TWO_IDS)
        # Frozen model: set the derived fields once, here, during validation.
        if self.type == "page_view" and self.page is None:
            object.__setattr__(self, "page", Page())
        if self.event_id is None:
            object.__setattr__(self, "event_id", derive_event_id(self))
        return self

    @property
    def id(self) -> str:
        """The event id; always set after validation."""
        assert self.event_id is not None
        return self.event_id

    def to_json(self) -> bytes:
        """The canonical wire form (what the normalised topic carries)."""
        return self.__pydantic_serializer__.to_json(self, exclude_none=True)


def derive_event_id(event: Event) -> str:
    """A content hash: the same event content always gives the same id.

    `source` and `identified` are left out on purpose, so an event read from a CSV export
    and the same event sent live as canonical JSON agree, and so does an event whose
    source says whether its shopper id is a known one and the same event whose source
    does not. `anonymous_id` counts: two identify events of one shopper that link
    different ids are different events.
    """
    content = event.model_dump(
        mode="json", exclude={"event_id", "source", "identified"}, exclude_none=True
    )
    digest = hashlib.blake2b(
        json.dumps(content, sort_keys=True, separators=(",", ":")).encode(), digest_size=16
    )
    return digest.hexdigest()
