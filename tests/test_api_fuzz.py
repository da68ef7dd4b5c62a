"""Schemathesis fuzzes the HTTP API from its own OpenAPI document: never a 5xx, and every answer
(status, content type, body) is one the document promises.

In process (ASGI), over the HTTP tests' scripted fleet, so the generated ids, pools and labels
sometimes hit real data. The live feed (an endless stream), the fleet page (HTML) and /healthz
(503 by design without NATS, tested against a real daemon in test_http_api) are left out.
"""

from __future__ import annotations

import warnings

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from workledger.http import create_app
from workledger.queries import Queries

from .test_http_api import _store
from .test_store_contract import t

pytestmark = [  # see test_http_api: the feed's routes use a style Litestar 2.25 deprecates
    pytest.mark.filterwarnings(r"ignore:Deprecated '\w+' parameter:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::litestar.exceptions.LitestarDeprecationWarning"),
]

_FUZZED = r"^/(v1/(workers|slots|tasks|pools|queues|quarantine|utilization|checkpoint)|workers/)"

with warnings.catch_warnings():  # built at collection, where the marks above do not reach
    warnings.simplefilter("ignore", DeprecationWarning)
    _app = create_app(Queries(_store(), clock=lambda: t(31)))
schema = schemathesis.openapi.from_asgi("/schema/openapi.json", _app).include(path_regex=_FUZZED)


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_input_makes_the_api_fail_or_stray_from_its_schema(case: schemathesis.Case) -> None:
    """Any generated request: no 5xx, and the response conforms to the OpenAPI document.

    Schemathesis would also expect every schema-valid request to succeed; some rules cannot be
    written in OpenAPI (``since`` before ``until``, a label's ``key:value`` form, at most 20,000
    buckets), and those answer a 422 that names the rule, so that one check is left out.
    """
    case.call_and_validate(excluded_checks=[positive_data_acceptance])
