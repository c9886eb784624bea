"""API conformance: schemathesis fuzzes every operation of `/openapi.json`
against a live gateway and checks each answer against the document.

Checks: no 5xx; every status is one the operation documents; content types,
headers and bodies match their schemas; and a request the document calls
valid is not refused with a 400 (only 404 for an id that does not exist, 409
for cancelling a finished batch). Cases are generated in both modes:
positive (fits the document) and negative (breaks it: wrong types, missing
fields). Generated ids are swapped, some of the time, for ids of real objects
of the caller, so the success paths (200 with a body) are exercised too.

`make test` runs a small derandomized sample; `make soak` runs over 1,000.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi import checks as oas

from harness.inline_gateway import ADMIN, Env
from harness.objects import Objects, make_objects

QUICK_EXAMPLES = 8  # per operation and mode: ~450 cases over the 29 operations
SOAK_EXAMPLES = 60  # ~3,400 cases
# A valid request may still name an object that does not exist (404) or ask to
# cancel a batch that has ended (409); anything else is a contract break.
ACCEPTED_STATUSES = ["2XX", "404", "409"]
CHECKS = [
    not_a_server_error,
    oas.status_code_conformance,
    oas.content_type_conformance,
    oas.response_headers_conformance,
    oas.response_schema_conformance,
    oas.positive_data_acceptance,
]


@dataclass
class Report:
    cases: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    by_operation: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    unsent: int = 0  # requests the HTTP client refused to build (e.g. CR in a header)


@dataclass
class Target:
    env: Env
    objects: Objects
    schema: Any


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    env = Env(Path(tmp_path_factory.mktemp("conformance")))
    try:
        objects = make_objects(env, "conformance")
        # From here on batches are created but never run: a run per fuzzed
        # batch would only slow the fuzzing down.
        env.runs.held = True
        config = SchemathesisConfig.from_dict(
            {"checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED_STATUSES}}}
        )
        schema = schemathesis.openapi.from_url(f"{env.url}/openapi.json", config=config)
        yield Target(env, objects, schema)
    finally:
        env.runs.held = False
        env.close()


def _real_ids(target: Target, name: str) -> list[str]:
    objects = target.objects
    if name in ("file_id", "after_file", "input_file_id"):
        return [*objects.file_ids.values()]
    return [*objects.batch_ids.values()]


def _aim(target: Target, case: Any, pick: int | None) -> None:
    """Swap generated ids for real ones when `pick` says so (positive mode only:
    a negative case must stay as generated)."""
    if pick is None or not case.meta or not case.meta.generation.mode.is_positive:
        return
    op = case.operation
    if op.path == "/admin/webhooks/{webhook_id}":
        # Delete a fresh endpoint, so the success path is reached too.
        created = target.env.admin(
            "POST", "/admin/webhooks", json={"url": "http://127.0.0.1:9/hook"}
        )
        case.path_parameters["webhook_id"] = created.json()["id"]
        return
    if op.method.upper() == "DELETE":
        # Deleting a shared object would turn later cases into 404s; delete a
        # fresh file instead.
        case.path_parameters["file_id"] = target.env.upload(target.objects.key, b"{}\n", "x.txt")
        return
    for name in list(case.path_parameters or {}):
        ids = _real_ids(target, name)
        case.path_parameters[name] = ids[pick % len(ids)]
    listing = op.path in ("/v1/files", "/v1/batches")
    if listing and isinstance(case.query, dict) and "after" in case.query:
        kind = "after_file" if op.path == "/v1/files" else "after_batch"
        ids = _real_ids(target, kind)
        case.query["after"] = ids[pick % len(ids)]
    batch_paths = ("/v1/batches", "/v1/batches/estimate")
    if op.path in batch_paths and isinstance(case.body, dict) and "input_file_id" in case.body:
        case.body["input_file_id"] = target.objects.input_file_id


def run_operation(
    target: Target, operation: Any, mode: GenerationMode, examples: int, report: Report
) -> None:
    # Admin operations (security `adminAuth`) and /metrics take the admin key.
    security = operation.definition.raw.get("security") or []
    admin = {"adminAuth": []} in security
    headers = {"Authorization": f"Bearer {ADMIN if admin else target.objects.key}"}

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(case=operation.as_strategy(generation_mode=mode), pick=st.none() | st.integers(0, 99))
    def one(case: Any, pick: int | None) -> None:
        _aim(target, case, pick)
        try:
            response = case.call(base_url=target.env.url, headers=headers, timeout=30)
        except (requests.exceptions.InvalidHeader, ValueError):
            report.unsent += 1
            return
        report.cases += 1
        report.statuses[response.status_code] += 1
        report.by_operation[operation.label] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (AssertionError, BaseExceptionGroup) as exc:
            report.failures.append(f"{operation.label} [{mode.value}]: {exc}"[:3000])

    # An operation without parameters has no negative cases at all.
    with contextlib.suppress(Unsatisfiable):
        one()


def run_conformance(target: Target, examples: int) -> Report:
    report = Report()
    operations = [result.ok() for result in target.schema.get_all_operations()]
    for operation in operations:
        for mode in GenerationMode:
            run_operation(target, operation, mode, examples, report)
    return report


def assert_conformant(report: Report, operations: int, min_cases: int) -> None:
    assert not report.failures, "\n\n".join(report.failures[:12])
    assert report.cases >= min_cases, report
    assert len(report.by_operation) == operations, report.by_operation
    assert not any(status >= 500 for status in report.statuses), report.statuses
    # The success paths were reached, not only the refusals.
    assert report.statuses[200] > 0 and report.statuses[404] > 0, report.statuses


def test_every_operation_answers_as_documented(target: Target) -> None:
    report = run_conformance(target, QUICK_EXAMPLES)
    operations = len(list(target.schema.get_all_operations()))
    assert_conformant(report, operations, min_cases=100)


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_soak_over_a_thousand_cases_answer_as_documented(target: Target) -> None:
    report = run_conformance(target, SOAK_EXAMPLES)
    operations = len(list(target.schema.get_all_operations()))
    print(
        f"schemathesis: {report.cases} cases over {operations} operations, "
        f"statuses {dict(sorted(report.statuses.items()))}, "
        f"per operation {dict(report.by_operation)}, unsent {report.unsent}"
    )
    assert_conformant(report, operations, min_cases=1000)
