"""Lead events: the source events that become a canonical `signup`.

An account creation (Segment `Signed Up`, GA4 `sign_up`), a lead form (GA4
`generate_lead`) and an email or SMS capture (a popup accepted, a newsletter signup) are
all `signup`s. The event keeps the source's name in `name`, so a rule can still tell them
apart, and `properties.channel` says `email` or `sms` when the source or the name says it.
"""

from __future__ import annotations

import re
from typing import Any, Final

from schemas.events import CUSTOM

SIGNUP: Final = "signup"
CHANNELS: Final = frozenset({"email", "sms"})  # the channels a signup can subscribe to

# Email and SMS captures (a popup accepted, a newsletter or SMS form sent), by their name's
# key (`name_key`) -> the channel. Only whole names match, and case, spaces, `-` and `_` do
# not matter: `Pop-up Email Accepted`, `popup_email_accepted` and `POPUP EMAIL ACCEPTED`
# are one name; `Email Signup Form Viewed` is none of them.
LEAD_CAPTURE_NAMES: Final[dict[str, str]] = {
    "popupemailaccepted": "email",
    "popupsmsaccepted": "sms",
    "emailcaptured": "email",
    "smscaptured": "sms",
    "emailsignup": "email",
    "emailsubscribed": "email",
    "newslettersignup": "email",
    "newslettersubscribed": "email",
    "smssignup": "sms",
    "smssubscribed": "sms",
}

_NOT_ALPHANUMERIC: Final = re.compile(r"[^a-z0-9]+")


def name_key(name: str) -> str:
    """A name as `LEAD_CAPTURE_NAMES` holds it: lower case, letters and digits only."""
    return _NOT_ALPHANUMERIC.sub("", name.lower())


def capture_channel(name: str) -> str | None:
    """The channel an email or SMS capture event subscribes to; None for any other name."""
    return LEAD_CAPTURE_NAMES.get(name_key(name))


def lead_channel(props: dict[str, Any], name: str) -> str | None:
    """The channel of a signup: what the properties say (`channel: SMS` is `sms`), else
    what the event's name says. None when neither says email or SMS, and when the
    properties name another channel (which they then keep as it is)."""
    given = props.get("channel")
    if isinstance(given, str) and given.strip():
        channel = given.strip().lower()
        return channel if channel in CHANNELS else None
    return capture_channel(name)


def unmapped_type(name: str) -> str:
    """The type of a source event that no table of its adapter maps: `signup` for an email
    or SMS capture, else `custom` (which keeps `name`)."""
    return SIGNUP if capture_channel(name) is not None else CUSTOM
