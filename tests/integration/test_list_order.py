"""List order through the official `openai` SDK: `files.list` and
`batches.list` return exactly the reverse of creation order (`order=asc`:
creation order), objects created in the same second included, and `after`
paging goes on from its object in that order while another client keeps
creating and after the object it names was deleted.

The gateway runs in this process under uvicorn (the parity suite's `Env`:
real HTTP, real DuckDB file). Batch runs are held, so batches stay
`validating`: listing them needs no processor.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from harness.inline_gateway import Env
from harness.lines import chat_line

FILES = 50
BATCHES = 20
PAGE = 7
ORDERS = ["desc", "asc"]
NEW_OBJECT_TIMEOUT_SECONDS = 30.0


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    running = Env(Path(tmp_path_factory.mktemp("list-order")))
    running.runs.held = True
    yield running
    running.close()


@dataclass
class Kind:
    """One listable kind of object, as a client sees it through the SDK."""

    count: int
    create: Callable[[openai.OpenAI], Any]
    list: Callable[..., Any]  # (client, order, limit, **after) -> SDK cursor page


def make_kind(env: Env, kind: str, key: str) -> Kind:
    if kind == "files":
        return Kind(
            FILES,
            lambda c: c.files.create(file=("notes.txt", b"notes"), purpose="user_data"),
            lambda c, order, limit, **after: c.files.list(order=order, limit=limit, **after),
        )
    input_file_id = env.upload(key, [chat_line("r1", "hello")])
    return Kind(
        BATCHES,
        lambda c: c.batches.create(
            input_file_id=input_file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
        # `order` is the gateway's extension to batches.list; the SDK sends it as extra query.
        lambda c, order, limit, **after: c.batches.list(
            limit=limit, extra_query={"order": order}, **after
        ),
    )


def sdk_client(env: Env, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=f"{env.url}/v1", max_retries=0)


def create_fast(kind: Kind, client: openai.OpenAI) -> list[Any]:
    """`kind.count` objects, one right after the other: many share a second."""
    created = [kind.create(client) for _ in range(kind.count)]
    assert max(Counter(o.created_at for o in created).values()) > 1, "no second held two"
    return created


def in_order(created: list[Any], order: str) -> list[str]:
    ids = [o.id for o in created]
    return ids[::-1] if order == "desc" else ids


def paged_ids(
    pages: Iterator[Any], between: Callable[[list[str]], None] = lambda _: None
) -> list[str]:
    """Every id of every page, calling `between(page ids)` before each next page is read."""
    seen: list[str] = []
    for page in pages:
        ids = [o.id for o in page.data]
        assert 0 < len(ids) <= PAGE
        seen += ids
        between(ids)
    assert len(seen) == len(set(seen)), "an object came twice"
    return seen


@pytest.mark.parametrize("kind_name", ["files", "batches"])
def test_lists_and_pages_are_exactly_creation_order(env: Env, kind_name: str) -> None:
    key = env.create_key(f"order-{kind_name}")
    client = sdk_client(env, key)
    kind = make_kind(env, kind_name, key)
    created = create_fast(kind, client)
    for order in ORDERS:
        whole = kind.list(client, order, 100)
        assert [o.id for o in whole.data] == in_order(created, order), order
        assert not whole.has_more
        first = kind.list(client, order, PAGE)
        assert paged_ids(first.iter_pages()) == in_order(created, order), order


def test_batches_list_refuses_an_unknown_order(env: Env) -> None:
    key = env.create_key("order-sideways")
    response = env.call(key, "GET", "/v1/batches?order=sideways")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "order"


class Creator(threading.Thread):
    """Another client that keeps creating objects until stopped or it made
    `kind.count` (so paging in `asc` order, which shows them all, ends);
    `created` is in creation order (one call after the other)."""

    def __init__(self, kind: Kind, client: openai.OpenAI) -> None:
        super().__init__(daemon=True)
        self.kind, self.client = kind, client
        self.created: list[str] = []
        self.grew = threading.Condition()
        self.stopping = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set() and len(self.created) < self.kind.count:
                made = self.kind.create(self.client)
                with self.grew:
                    self.created.append(made.id)
                    self.grew.notify_all()
        except BaseException as exc:  # reported by the test
            self.failure = exc

    def wait_for_one_more(self) -> None:
        """Block until this client has created one more object than now
        (or has made all it will)."""
        with self.grew:
            target = min(len(self.created) + 1, self.kind.count)
            assert self.grew.wait_for(
                lambda: len(self.created) >= target or self.failure is not None,
                timeout=NEW_OBJECT_TIMEOUT_SECONDS,
            )
        assert self.failure is None, self.failure

    def stop(self) -> list[str]:
        self.stopping.set()
        self.join(timeout=NEW_OBJECT_TIMEOUT_SECONDS)
        assert self.failure is None, self.failure
        return list(self.created)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("kind_name", ["files", "batches"])
def test_paging_goes_on_in_order_while_another_client_creates(
    env: Env, kind_name: str, order: str
) -> None:
    """Objects created between page reads are newer than every page's
    cursor: in `desc` they sort before it (no later page shows them), in
    `asc` they come at the end. Nothing is repeated or skipped."""
    key = env.create_key(f"busy-{kind_name}-{order}")
    client = sdk_client(env, key)
    kind = make_kind(env, kind_name, key)
    created = create_fast(kind, client)
    creator = Creator(kind, sdk_client(env, key))
    creator.start()
    try:
        pages = kind.list(client, order, PAGE).iter_pages()
        seen = paged_ids(pages, between=lambda _: creator.wait_for_one_more())
    finally:
        newer = creator.stop()
    old = in_order(created, order)
    if order == "desc":
        # The first page may show objects made before it was read; no later page does.
        assert seen[-len(old) :] == old
        assert seen[: -len(old)] == newer[: len(seen) - len(old)][::-1]
    else:
        assert seen[: len(old)] == old
        assert seen[len(old) :] == newer[: len(seen) - len(old)]
        assert len(seen) > len(old), "objects created while paging are missing at the end"


@pytest.mark.parametrize("order", ORDERS)
def test_paging_goes_on_after_the_cursor_file_was_deleted(env: Env, order: str) -> None:
    """The file an `after` names, and others on its page, deleted before the
    next page is read: the next page starts right after its place."""
    key = env.create_key(f"deleted-{order}")
    client = sdk_client(env, key)
    created = create_fast(make_kind(env, "files", key), client)
    deleted: list[str] = []

    def delete_some(page: list[str]) -> None:
        for file_id in dict.fromkeys((page[-1], page[0])):  # the cursor first
            assert client.files.delete(file_id).deleted
            deleted.append(file_id)

    seen = paged_ids(client.files.list(order=order, limit=PAGE).iter_pages(), between=delete_some)
    assert seen == in_order(created, order)
    left = [i for i in in_order(created, order) if i not in deleted]
    assert [f.id for f in client.files.list(order=order).data] == left
