"""The HubSpot stand-in: contacts, companies, deals, leads, email engagements, v4 associations,
owners, pipelines, OAuth and webhooks.

`sandbox` assembles the server and admits each call; `admin` holds the user-side controls and
seeding; `limits` the burst, daily and search limits; `objects` and `batch` the v3 object routes,
`search` the search request, `associations` the v4 routes, `account` owners and pipelines,
`oauth` the token endpoint, `scopes` the scopes each call needs, `webhooks` the app's
subscriptions; `writes` how a write is checked and applied; `records` the data.
"""

from maillink.sandbox.hubspot.errors import ApiError
from maillink.sandbox.hubspot.limits import (
    HUBSPOT_DAILY,
    HUBSPOT_PRIVATE_APP_BURST,
    HUBSPOT_PUBLIC_APP_BURST,
    HUBSPOT_SEARCH_PER_SECOND,
)
from maillink.sandbox.hubspot.sandbox import HubSpotSandbox, ReceivedRequest

__all__ = [
    "HUBSPOT_DAILY",
    "HUBSPOT_PRIVATE_APP_BURST",
    "HUBSPOT_PUBLIC_APP_BURST",
    "HUBSPOT_SEARCH_PER_SECOND",
    "ApiError",
    "HubSpotSandbox",
    "ReceivedRequest",
]
