"""The operator's dashboard: a read-only web view of the coordinator, served by it.

``detente coordinator serve --dashboard 127.0.0.1:PORT`` serves, in a thread of
the coordinator process, HTML pages and a JSON API (``/api/``, described by
``/api/openapi.json``) over the coordinator's store: the worker pool as the
coordinator last checked it, parties and their data sets' public metadata, jobs and
their progress, sealed models, the audit log and its chain status.

Nothing here writes to the store, and nothing shown is secret: the store holds
no plaintext and no key, and the views pick public fields one by one (never
a manifest's wrapped key, never an output's ciphertext). Access needs the
operator token (:mod:`coordinator.dashboard.access`); every asset is package
data, so a browser showing it reaches nothing but the coordinator.

Modules: ``access`` (operator token, sessions), ``views`` (the data both the
pages and the API serve), ``charts`` (inline SVG), ``app`` (the ASGI
application), ``service`` (uvicorn in a thread).
"""

from coordinator.dashboard.access import TOKEN_FILE_NAME, operator_token
from coordinator.dashboard.service import RunningDashboard, parse_address, start_dashboard

__all__ = [
    "TOKEN_FILE_NAME",
    "RunningDashboard",
    "operator_token",
    "parse_address",
    "start_dashboard",
]
