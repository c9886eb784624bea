"""Prefect retries a flow's tasks on a crash, not on the gateway's refusals."""

from __future__ import annotations

from prefect.states import Failed

from flows.process_batch import execute_chunk_task, finalize_task, worth_retrying
from tasks.ledger import BatchNotFound, InputUnavailable, LeaseLost


def test_a_refusal_by_the_gateway_is_not_retried_a_crash_is() -> None:
    for refusal in (LeaseLost("another run holds it"), BatchNotFound("x"), InputUnavailable("x")):
        assert not worth_retrying(None, None, Failed(data=refusal))
    assert worth_retrying(None, None, Failed(data=ConnectionError("gateway away")))
    assert worth_retrying(None, None, Failed(message="crashed"))
    for task in (execute_chunk_task, finalize_task):
        assert task.retries == 2 and task.retry_condition_fn is worth_retrying
