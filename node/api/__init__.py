"""The node's REST API (``/api/v1``) over :class:`Operations`, shared with the console."""

from node.api.guard import COOKIE, Caller, Guard
from node.api.ops import ActionResult, Operations, advice
from node.api.routes import PREFIX, api_routes

__all__ = ["COOKIE", "PREFIX", "ActionResult", "Caller", "Guard", "Operations", "advice",
           "api_routes"]  # fmt: skip
