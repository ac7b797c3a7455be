"""The JSON API against its own /openapi.json: generated requests never get a server error.

schemathesis runs all its phases (schema examples, boundary values, random
fuzzing, stateful sequences) in-process against the ASGI app, on the filled
database of each backend, with the web token so that mutations run too. Every
check is on: no 5xx and no exception, only documented status codes, responses
that match their schema, schema-invalid input refused, schema-valid input accepted.

One allowance: POST /api/reproductions may answer a schema-valid body with 400.
Its ``token`` is a string the parameter space parses (farm.params.SeedToken:
overrides must be known knobs within their ranges) and its ``kernels`` must be
registered; the 400 names what is wrong, which a pattern in the schema could not.

The run is seeded, so it generates the same requests each time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import schemathesis
from conftest import WEB_TOKEN, Filled
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema

from farm.web import create_app

SEED = 20261203
EXAMPLES = {"sqlite": 25, "postgresql": 10}  # per operation and phase; keeps each run < ~40 s


@dataclass
class Run:
    cases: int = 0
    problems: dict[str, str] = field(default_factory=dict)  # what failed -> one example

    def note(self, key: str, example: str) -> None:
        self.problems.setdefault(key, example)


def run_schemathesis(url: str, max_examples: int) -> Run:
    """Every phase of schemathesis against the app on ``url``; what failed, once per kind."""
    app = create_app(url, web_token=WEB_TOKEN, cache_ttl=0)
    config = SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "headers": {"Authorization": f"Bearer {WEB_TOKEN}"},
            "generation": {"max-examples": max_examples, "database": "none"},
            "operations": [
                {
                    "include-path": "/api/reproductions",
                    "include-method": "POST",
                    "checks": {
                        "positive_data_acceptance": {
                            "expected-statuses": ["2xx", "400", "401", "403", "404", "409"]
                        }
                    },
                }
            ],
        }
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    run = Run()
    try:
        for event in from_schema(schema).execute():
            if isinstance(event, events.ScenarioFinished):
                run.cases += len(event.recorder.cases)
                for nodes in event.recorder.checks.values():
                    for node in nodes:
                        if node.failure_info is not None:
                            info = node.failure_info
                            run.note(
                                f"{event.recorder.label}: {node.name}: {info.failure.title}",
                                f"{info.failure.message[:300]} | "
                                + (info.code_sample.splitlines()[-1] if info.code_sample else ""),
                            )
            elif isinstance(event, events.NonFatalError):  # the app raised: a 500 on a server
                run.note(f"{event.label}: exception: {event.value!r}"[:300], event.label)
            elif isinstance(event, events.FatalError):
                run.note(f"schemathesis failed: {event.exception!r}", "")
    finally:
        app.state.web.engine.dispose()
    return run


def test_generated_requests_get_no_server_error_and_only_documented_answers(
    web_db: Filled,
) -> None:
    backend = "postgresql" if web_db.url.startswith("postgresql") else "sqlite"
    started = time.monotonic()
    run = run_schemathesis(web_db.url, EXAMPLES[backend])
    elapsed = time.monotonic() - started
    print(f"schemathesis on {backend}: {run.cases} cases in {elapsed:.0f} s")
    assert run.problems == {}
    assert run.cases >= 300  # the run really generated requests
