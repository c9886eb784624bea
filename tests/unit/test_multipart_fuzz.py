"""Fuzzing `POST /v1/files` with generated multipart bodies: missing fields,
wrong types, path-like filenames, broken framing and oversize files. The
answer is always 200 or a 4xx error envelope, never a 5xx; a refused upload
leaves nothing behind (no metadata row, no blob, no temp file); an accepted
one stores exactly the bytes sent under a bare file name."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from gateway.routes.files import UPLOAD_PURPOSES
from harness.live import inprocess_app

LIMIT = 2048
BOUNDARY = "fuzzb0undary"
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@dataclass(frozen=True)
class Part:
    name: str | None  # None: no name in Content-Disposition
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class Target:
    client: TestClient
    key: str
    app: Any

    def stored(self) -> tuple[int, list[Path]]:
        """(file rows of the key, every entry of the blob directory, temp files too)."""
        state = self.app.state.gateway
        rows, _ = state.store.list_files(
            state.store.find_api_key(self.key).id,
            purpose=None,
            limit=100_000,
            order="asc",
            after=None,
        )
        return len(rows), sorted(state.blobs.root.iterdir())


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    app = inprocess_app(tmp_path_factory.mktemp("fuzz"), max_file_bytes=LIMIT)
    _, key = app.state.gateway.store.create_api_key("fuzz")
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Target(client, key, app)
    app.state.gateway.store.close()


path_names = st.sampled_from(
    [
        "../../x",
        "..\\..\\x.jsonl",
        "/etc/passwd",
        "C:\\Windows\\win.ini",
        "..",
        ".",
        "",
        "a/b/c.jsonl",
        "x\x00y.jsonl",
        "\u202e.jsonl",
        "in.jsonl",
        "%2e%2e%2fx",
        "x" * 400,
    ]
)
# Any text a client could put in a quoted header value (no quote, CR or LF).
filenames = (
    st.none() | path_names | st.text(max_size=30).filter(lambda s: not set(s) & set('"\r\n'))
)
names = st.sampled_from(
    ["file", "purpose", "expires_after[anchor]", "expires_after[seconds]", "other", "FILE", ""]
)
values = st.one_of(
    st.sampled_from([*sorted(UPLOAD_PURPOSES), "batch_output", "created_at", "3600", "-1"]).map(
        str.encode
    ),
    st.sampled_from(["99999999999999999999", "3600.0", "nope", "[]", "{}", "null"]).map(str.encode),
    st.binary(max_size=40),
    st.text(max_size=20).map(str.encode),
)
datas = st.one_of(
    values,
    st.binary(max_size=64),
    st.integers(LIMIT - 2, LIMIT + 200).map(lambda n: b"x" * n),  # around the limit
)
parts = st.builds(
    Part,
    name=st.none() | names,
    filename=filenames,
    content_type=st.none() | st.sampled_from(["application/jsonl", "text/plain", "x/\x7f"]),
    data=datas,
)

# Mostly-right forms (a file and a purpose, plus noise), so success is common too.
plausible = st.tuples(
    st.builds(Part, st.just("file"), filenames, st.none(), datas),
    st.builds(
        Part,
        st.just("purpose"),
        st.none(),
        st.none(),
        st.sampled_from(sorted(UPLOAD_PURPOSES)).map(str.encode) | values,
    ),
    st.lists(parts, max_size=2),
).flatmap(lambda t: st.permutations([t[0], t[1], *t[2]]))
forms = st.one_of(st.lists(parts, max_size=5), plausible)


def render(parts: list[Part], boundary: str = BOUNDARY) -> bytes:
    out = bytearray()
    for part in parts:
        disposition = "form-data"
        if part.name is not None:
            disposition += f'; name="{part.name}"'
        if part.filename is not None:
            disposition += f'; filename="{part.filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if part.content_type is not None:
            out += f"Content-Type: {part.content_type}\r\n".encode()
        out += b"\r\n" + part.data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def _seconds_ok(raw: bytes) -> bool:
    return raw.isdigit() and 3600 <= int(raw) <= 2_592_000


def expected_ok(parts: list[Part]) -> bool:
    """The upload rules, restated for well-framed bodies (the last value of a
    repeated field wins, but every value must be UTF-8; parts without a name
    are ignored)."""
    fields: dict[str, bytes] = {}
    for p in parts:
        if p.name and p.name != "file":
            fields[p.name] = p.data
    files = [p for p in parts if p.name == "file"]
    if len(files) != 1 or len(files[0].data) > LIMIT:
        return False
    try:
        for p in parts:
            if p.name and p.name != "file":
                p.data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    text = {name: data.decode("utf-8") for name, data in fields.items()}
    if text.get("purpose") not in UPLOAD_PURPOSES:
        return False
    anchor = text.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is not None and anchor != "created_at":
        return False
    if anchor is not None and seconds is None:
        return False
    return seconds is None or _seconds_ok(seconds)


def check(target: Target, body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
    before = target.stored()
    response = target.client.post(
        "/v1/files",
        content=body,
        headers={"Authorization": f"Bearer {target.key}", "Content-Type": content_type},
    )
    assert response.status_code < 500, response.text
    payload = response.json()
    rows, blobs = target.stored()
    if response.status_code == 200:
        assert rows == before[0] + 1
        assert len(blobs) == len(before[1]) + 1
        name = payload["filename"]
        assert name and "/" not in name and "\\" not in name and name not in (".", "..")
        assert name.isprintable() and len(name) <= 255
        content = target.client.get(
            f"/v1/files/{payload['id']}/content",
            headers={"Authorization": f"Bearer {target.key}"},
        )
        assert len(content.content) == payload["bytes"] <= LIMIT
    else:
        assert 400 <= response.status_code < 500
        assert set(payload["error"]) == {"message", "type", "param", "code"}
        assert (rows, blobs) == before, "a refused upload left something behind"
    return response.status_code, payload


@FUZZ
@given(parts=forms)
def test_generated_forms_get_200_or_a_4xx_envelope(target: Target, parts: list[Part]) -> None:
    status, payload = check(target, render(parts), f"multipart/form-data; boundary={BOUNDARY}")
    event(f"status {status}")
    if expected_ok(parts):
        assert status == 200, payload
    else:
        assert status in (400, 413), payload


@FUZZ
@given(
    parts=st.lists(parts, min_size=1, max_size=4),
    cut=st.integers(min_value=0),
    content_type=st.sampled_from(
        [
            f"multipart/form-data; boundary={BOUNDARY}",
            "multipart/form-data; boundary=other",
            "multipart/form-data",
            "application/json",
            "text/plain",
            "",
        ]
    ),
)
def test_broken_framing_is_refused_cleanly(
    target: Target, parts: list[Part], cut: int, content_type: str
) -> None:
    body = render(parts)
    check(target, body[: cut % len(body)], content_type)


def test_declared_oversize_body_is_413_before_reading(target: Target) -> None:
    status, payload = check(
        target,
        render(
            [Part("purpose", None, None, b"batch"), Part("file", "x.jsonl", None, b"x" * 70_000)]
        ),
        f"multipart/form-data; boundary={BOUNDARY}",
    )
    assert status == 413
    assert payload["error"]["param"] == "file"
