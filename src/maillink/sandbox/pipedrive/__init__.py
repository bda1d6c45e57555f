"""The Pipedrive stand-in: persons, deals, leads, projects, activity types and activities.

`sandbox` assembles the server and admits each call; `limits` holds the burst window and the
daily token budget, `views` the API routes, `admin` the merge route, `data` the records and
their JSON, `query` the parsing of parameters and errors.
"""

from maillink.sandbox.pipedrive.admin import ADMIN_COSTS
from maillink.sandbox.pipedrive.query import ApiError
from maillink.sandbox.pipedrive.sandbox import PipedriveSandbox, ReceivedRequest
from maillink.sandbox.pipedrive.views import TOKEN_COSTS, V2_QUERY_PARAMS

__all__ = [
    "ADMIN_COSTS",
    "TOKEN_COSTS",
    "V2_QUERY_PARAMS",
    "ApiError",
    "PipedriveSandbox",
    "ReceivedRequest",
]
