"""How a flow run talks to the gateway: one interface, two twins.

`HttpWorkerAPI` is what runs in production: plain HTTP to the gateway's
internal API with the internal token, so a worker can run on any machine.
`LocalWorkerAPI` calls the same `BatchLedger` in-process, so unit tests run
the very same tasks without HTTP. Both raise the ledger's errors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Protocol, cast

import orjson

from storage.records import ProviderRecord
from tasks.ledger import (
    BatchLedger,
    BatchNotFound,
    InputUnavailable,
    LeaseLost,
    LedgerError,
    chunk_view,
)
from tasks.worker_messages import (
    ChunkClaim,
    ChunkClaimAnswer,
    ChunkResult,
    ChunkView,
    Claim,
    ClaimAnswer,
    ClaimsAnswer,
    ClaimsRenewal,
    Control,
    Failure,
    Finalize,
    OutcomeName,
    Plan,
    Release,
    Renewal,
    WorkerMessage,
)

if TYPE_CHECKING:  # the flow process never opens DuckDB: keep it out of its imports
    import httpx  # imported when an HttpWorkerAPI is made: `batchgate run` never needs it

    from storage.metadata import MetadataStore

log = logging.getLogger("batchgate.worker")


class WorkerAPI(Protocol):
    def claim(self, batch_id: str, flow_run_id: str | None) -> ClaimAnswer: ...
    def renew(self, batch_id: str, token: str, *, claims: bool = False) -> Control: ...
    def release(self, batch_id: str, token: str) -> None: ...
    def claim_chunk(
        self, batch_id: str, flow_run_id: str | None, lease_token: str | None = None
    ) -> ChunkClaimAnswer: ...
    def renew_claims(self, batch_id: str, tokens: Sequence[str]) -> ClaimsAnswer: ...
    def input_blocks(self, batch_id: str) -> AbstractContextManager[Iterator[bytes]]: ...
    def save_plan(
        self,
        batch_id: str,
        token: str,
        *,
        total: int,
        chunks: Sequence[dict[str, Any]],
        errors: Sequence[dict[str, Any]],
        models: Sequence[str],
    ) -> Control: ...
    def chunks(self, batch_id: str) -> list[ChunkView]: ...
    def chunk_input(self, batch_id: str, index: int) -> bytes: ...
    def record_chunk(
        self,
        batch_id: str,
        token: str,
        index: int,
        *,
        output: bytes,
        errors: bytes,
        completed: int,
        failed: int,
        usage: dict[str, Any] | None,
        model: str | None,
        meta: Sequence[dict[str, Any]] | None = None,
        usage_rows: Sequence[dict[str, Any]] | None = None,
        metrics: dict[str, Any] | None = None,
        stopped: int = 0,
    ) -> Control: ...
    def finalize(self, batch_id: str, token: str, outcome: OutcomeName) -> dict[str, Any]: ...
    def fail(
        self, batch_id: str, token: str, errors: Sequence[dict[str, Any]]
    ) -> dict[str, Any]: ...
    def providers(self) -> list[ProviderRecord]: ...
    def retention(self) -> dict[str, Any]: ...
    def results_summary(self, batch_id: str) -> dict[str, Any] | None: ...


class LocalWorkerAPI:
    """The in-process twin: the ledger called directly."""

    def __init__(self, ledger: BatchLedger, store: MetadataStore) -> None:
        self.ledger = ledger
        self.store = store

    def claim(self, batch_id: str, flow_run_id: str | None) -> ClaimAnswer:
        return self.ledger.claim(batch_id, flow_run_id)

    def renew(self, batch_id: str, token: str, *, claims: bool = False) -> Control:
        return self.ledger.renew(batch_id, token, claims=claims)

    def release(self, batch_id: str, token: str) -> None:
        self.ledger.release(batch_id, token)

    def claim_chunk(
        self, batch_id: str, flow_run_id: str | None, lease_token: str | None = None
    ) -> ChunkClaimAnswer:
        return self.ledger.claim_chunk(batch_id, flow_run_id, lease_token)

    def renew_claims(self, batch_id: str, tokens: Sequence[str]) -> ClaimsAnswer:
        return self.ledger.renew_claims(batch_id, tokens)

    @contextmanager
    def input_blocks(self, batch_id: str) -> Iterator[Iterator[bytes]]:
        yield self.ledger.input_blocks(batch_id)

    def save_plan(self, batch_id: str, token: str, **plan: Any) -> Control:
        return self.ledger.save_plan(batch_id, token, **plan)

    def chunks(self, batch_id: str) -> list[ChunkView]:
        return [chunk_view(c) for c in self.ledger.chunks(batch_id)]

    def chunk_input(self, batch_id: str, index: int) -> bytes:
        return self.ledger.chunk_input(batch_id, index)

    def record_chunk(self, batch_id: str, token: str, index: int, **result: Any) -> Control:
        return self.ledger.record_chunk(batch_id, token, index, **result)

    def finalize(self, batch_id: str, token: str, outcome: OutcomeName) -> dict[str, Any]:
        return asdict(self.ledger.finalize(batch_id, token, outcome))

    def fail(self, batch_id: str, token: str, errors: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return asdict(self.ledger.fail(batch_id, token, errors))

    def providers(self) -> list[ProviderRecord]:
        return self.store.list_providers()

    def retention(self) -> dict[str, Any]:
        from tasks.retention import sweep

        return sweep(self.store, self.ledger.blobs)

    def results_summary(self, batch_id: str) -> dict[str, Any] | None:
        """In-process runs (unit tests) publish no analytics."""
        return None


SUMMARY_PATIENCE = 3.0  # seconds a finished run waits for an unreachable gateway's summary

_ERRORS: dict[int, type[LedgerError]] = {404: BatchNotFound, 409: LeaseLost, 410: InputUnavailable}


class HttpWorkerAPI:
    """The production twin: the gateway's internal API over HTTP.

    Connection failures are retried for `patience` seconds, so a gateway
    restart pauses a run instead of killing it."""

    def __init__(self, base_url: str, token: str, *, patience: float = 120.0) -> None:
        import httpx

        self.base = base_url.rstrip("/") + "/internal"
        self.patience = patience
        self.http = httpx.Client(
            headers={"Authorization": f"Bearer {token}"}, timeout=httpx.Timeout(60.0, connect=5.0)
        )

    @classmethod
    def from_settings(cls, settings: Any) -> HttpWorkerAPI:
        if not settings.internal_token:
            raise RuntimeError("BATCHGATE_INTERNAL_TOKEN is not set for this worker")
        return cls(settings.public_url, settings.internal_token)

    def _request(
        self,
        method: str,
        path: str,
        body: WorkerMessage | None = None,
        *,
        patience: float | None = None,
    ) -> httpx.Response:
        import httpx

        deadline = time.monotonic() + (self.patience if patience is None else patience)
        delay = 0.5
        content = body.model_dump_json().encode() if body is not None else None
        while True:
            try:
                response = self.http.request(
                    method,
                    self.base + path,
                    content=content,
                    headers={"content-type": "application/json"},
                )
            except httpx.TransportError as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("gateway unreachable (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if response.status_code >= 500 and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if response.status_code in _ERRORS:
                message = response.json().get("error", {}).get("message", response.text)
                raise _ERRORS[response.status_code](message)
            response.raise_for_status()
            return response

    def _json(
        self,
        method: str,
        path: str,
        body: WorkerMessage | None = None,
        *,
        patience: float | None = None,
    ) -> dict[str, Any]:
        """A JSON object answer (the gateway's own shapes: tasks/ledger.py)."""
        answer = orjson.loads(self._request(method, path, body, patience=patience).content)
        if not isinstance(answer, dict):
            raise LedgerError(f"{path}: expected a JSON object, got {type(answer).__name__}")
        return answer

    def _json_list(self, path: str) -> list[dict[str, Any]]:
        """A JSON list-of-objects answer (GET)."""
        answer = orjson.loads(self._request("GET", path).content)
        if not isinstance(answer, list):
            raise LedgerError(f"{path}: expected a JSON list, got {type(answer).__name__}")
        return answer

    def claim(self, batch_id: str, flow_run_id: str | None) -> ClaimAnswer:
        return cast(
            ClaimAnswer,
            self._json("POST", f"/batches/{batch_id}/claim", Claim(flow_run_id=flow_run_id)),
        )

    def renew(self, batch_id: str, token: str, *, claims: bool = False) -> Control:
        body = Renewal(lease_token=token, claims=claims)
        return cast(Control, self._json("POST", f"/batches/{batch_id}/renew", body))

    def release(self, batch_id: str, token: str) -> None:
        self._request("POST", f"/batches/{batch_id}/release", Release(lease_token=token))

    def claim_chunk(
        self, batch_id: str, flow_run_id: str | None, lease_token: str | None = None
    ) -> ChunkClaimAnswer:
        body = ChunkClaim(flow_run_id=flow_run_id, lease_token=lease_token)
        return cast(ChunkClaimAnswer, self._json("POST", f"/batches/{batch_id}/chunks/claim", body))

    def renew_claims(self, batch_id: str, tokens: Sequence[str]) -> ClaimsAnswer:
        body = ClaimsRenewal(chunk_tokens=list(tokens))
        return cast(ClaimsAnswer, self._json("POST", f"/batches/{batch_id}/chunks/renew", body))

    @contextmanager
    def input_blocks(self, batch_id: str) -> Iterator[Iterator[bytes]]:
        with self.http.stream("GET", f"{self.base}/batches/{batch_id}/input") as response:
            if response.status_code in _ERRORS:
                response.read()
                raise _ERRORS[response.status_code](response.text)
            response.raise_for_status()
            yield response.iter_bytes(1 << 20)

    def save_plan(self, batch_id: str, token: str, **plan: Any) -> Control:
        return cast(
            Control,
            self._json("POST", f"/batches/{batch_id}/plan", Plan(lease_token=token, **plan)),
        )

    def chunks(self, batch_id: str) -> list[ChunkView]:
        return cast(list[ChunkView], self._json_list(f"/batches/{batch_id}/chunks"))

    def chunk_input(self, batch_id: str, index: int) -> bytes:
        return self._request("GET", f"/batches/{batch_id}/chunks/{index}/input").content

    def record_chunk(
        self, batch_id: str, token: str, index: int, *, output: bytes, errors: bytes, **result: Any
    ) -> Control:
        body = ChunkResult(
            lease_token=token, output=output.decode(), errors=errors.decode(), **result
        )
        return cast(Control, self._json("POST", f"/batches/{batch_id}/chunks/{index}", body))

    def finalize(self, batch_id: str, token: str, outcome: OutcomeName) -> dict[str, Any]:
        body = Finalize(lease_token=token, outcome=outcome)
        return self._json("POST", f"/batches/{batch_id}/finalize", body)

    def fail(self, batch_id: str, token: str, errors: Sequence[dict[str, Any]]) -> dict[str, Any]:
        body = Failure(lease_token=token, errors=list(errors))
        return self._json("POST", f"/batches/{batch_id}/fail", body)

    def providers(self) -> list[ProviderRecord]:
        return [ProviderRecord(**p) for p in self._json_list("/providers")]

    def retention(self) -> dict[str, Any]:
        return self._json("POST", "/retention")

    def results_summary(self, batch_id: str) -> dict[str, Any] | None:
        """The ended batch's summary; the gateway builds the results table
        and summary on this first request (issue 12). The batch has ended by
        then and the summary is a report, so a gateway going down is waited
        for briefly, not for the run's whole patience: a run held here kept
        its runner from stopping with `batchgate up`."""
        return self._json("GET", f"/batches/{batch_id}/summary", patience=SUMMARY_PATIENCE)
