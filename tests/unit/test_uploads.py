"""The streaming multipart parser and the upload rules, without HTTP."""

from __future__ import annotations

import io

import pytest

from gateway.errors import APIError
from gateway.routes.files import upload_params
from gateway.uploads import (
    StreamingFormParser,
    UploadForm,
    UploadMalformed,
    UploadTooLarge,
    safe_filename,
)

BOUNDARY = "b0undary"
CTYPE = f"multipart/form-data; boundary={BOUNDARY}"


def body(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def parse(raw: bytes, step: int, max_bytes: int = 10_000) -> tuple[UploadForm, bytes]:
    sink = io.BytesIO()
    parser = StreamingFormParser(CTYPE, sink, max_file_bytes=max_bytes)
    for i in range(0, len(raw), step):
        parser.feed(raw[i : i + step])
    return parser.finish(), sink.getvalue()


@pytest.mark.parametrize("step", [1, 2, 7, 64, 100_000])
def test_any_chunking_gives_the_same_form(step: int) -> None:
    payload = b'{"a":1}\r\n--not-the-boundary\r\n' * 20
    raw = body(
        [
            ("purpose", None, b"batch"),
            ("file", "in.jsonl", payload),
            ("expires_after[seconds]", None, b"3600"),
        ]
    )
    form, written = parse(raw, step)
    assert written == payload
    assert form.file_bytes == len(payload)
    assert form.filename == "in.jsonl"
    assert form.fields == {"purpose": "batch", "expires_after[seconds]": "3600"}


def test_file_over_the_limit_raises_while_streaming() -> None:
    raw = body([("file", "x.jsonl", b"x" * 101)])
    with pytest.raises(UploadTooLarge):
        parse(raw, 16, max_bytes=100)
    form, written = parse(body([("file", "x.jsonl", b"x" * 100)]), 16, max_bytes=100)
    assert form.file_bytes == 100 and len(written) == 100


@pytest.mark.parametrize("ctype", [None, "application/json", "multipart/form-data"])
def test_non_multipart_bodies_are_malformed(ctype: str | None) -> None:
    with pytest.raises(UploadMalformed):
        StreamingFormParser(ctype, io.BytesIO(), max_file_bytes=10)


def test_truncated_body_is_malformed() -> None:
    raw = body([("file", "x.jsonl", b"abc")])
    with pytest.raises(UploadMalformed):
        parse(raw[:-10], 4)


def test_two_files_are_refused() -> None:
    raw = body([("file", "a", b"1"), ("file", "b", b"2")])
    with pytest.raises(UploadMalformed) as caught:
        parse(raw, 8)
    assert caught.value.param == "file"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\in.jsonl", "in.jsonl"),
        ("a/b/", "file"),
        ("..", "file"),
        (None, "file"),
        ("tab\there.jsonl", "tabhere.jsonl"),
        ("x" * 300, "x" * 255),
    ],
)
def test_safe_filename_keeps_a_base_name_only(raw: str | None, expected: str) -> None:
    assert safe_filename(raw) == expected


def test_upload_params_rules() -> None:
    form = UploadForm(fields={"purpose": "batch"}, filename="in.jsonl", file_bytes=3)
    params = upload_params(form, created_at=1000, batch_ttl_seconds=50)
    assert (params.purpose, params.expires_at, params.mime_type) == (
        "batch",
        1050,
        "application/jsonl",
    )
    user = UploadForm(
        fields={"purpose": "user_data"}, filename="a.png", file_content_type="image/png"
    )
    assert upload_params(user, 1000, 50).expires_at is None
    assert upload_params(user, 1000, 50).mime_type == "image/png"
    dated = UploadForm(
        fields={
            "purpose": "batch",
            "expires_after[anchor]": "created_at",
            "expires_after[seconds]": "3600",
        },
        filename="a.jsonl",
    )
    assert upload_params(dated, 1000, 50).expires_at == 4600


@pytest.mark.parametrize(
    ("fields", "filename", "param"),
    [
        ({"purpose": "batch"}, None, "file"),
        ({}, "a.jsonl", "purpose"),
        ({"purpose": "batch_output"}, "a.jsonl", "purpose"),
        (
            {"purpose": "batch", "expires_after[anchor]": "now", "expires_after[seconds]": "3600"},
            "a.jsonl",
            "expires_after.anchor",
        ),
        (
            {"purpose": "batch", "expires_after[anchor]": "created_at"},
            "a.jsonl",
            "expires_after.seconds",
        ),
        (
            {"purpose": "batch", "expires_after[seconds]": "3599"},
            "a.jsonl",
            "expires_after.seconds",
        ),
        (
            {"purpose": "batch", "expires_after[seconds]": "2592001"},
            "a.jsonl",
            "expires_after.seconds",
        ),
        (
            {"purpose": "batch", "expires_after[seconds]": " 3600"},
            "a.jsonl",
            "expires_after.seconds",
        ),
    ],
)
def test_upload_params_refusals_name_the_param(
    fields: dict[str, str], filename: str | None, param: str
) -> None:
    with pytest.raises(APIError) as caught:
        upload_params(UploadForm(fields=fields, filename=filename), 1000, 50)
    assert caught.value.status == 400
    assert caught.value.param == param
