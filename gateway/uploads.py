"""Streaming multipart/form-data parsing for file uploads.

Starlette's `request.form()` spools every part before the handler sees it,
so an upload would be held (in memory or a second temp file) before it
reaches the blob store. Here the body is fed chunk by chunk into
python-multipart's streaming parser: bytes of the `file` part go straight
to a sink (the blob writer), the small text fields are collected with a size
cap, and the file size limit is enforced while the bytes flow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import BinaryIO

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 32
MAX_FILENAME_CHARS = 255
FILE_FIELD = "file"


class UploadTooLarge(Exception):
    """The file part grew past the size limit; the caller answers 413."""


class UploadMalformed(Exception):
    """The body is not a usable multipart form; the caller answers 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass
class UploadForm:
    """What a multipart upload carried, minus the file bytes (already in the sink)."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None  # None when no `file` part was sent
    file_bytes: int = 0
    file_content_type: str | None = None


def safe_filename(raw: str | None) -> str:
    """The base name of a client-supplied filename: no directories, no control
    characters, bounded length. It is only ever shown back, never a disk path."""
    name = re.split(r"[\\/]", raw or "")[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    if name in ("", ".", ".."):
        return "file"
    return name[:MAX_FILENAME_CHARS]


def multipart_boundary(content_type: str | None) -> bytes:
    """The boundary of a multipart/form-data Content-Type, or UploadMalformed."""
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data":
        raise UploadMalformed("The request body must be multipart/form-data.", param="file")
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadMalformed("The multipart Content-Type has no boundary.", param="file")
    return boundary


class StreamingFormParser:
    """Feed it the request body in chunks; file bytes go to `sink` as they come.

    `max_file_bytes` bounds the file part: passing it raises UploadTooLarge at
    once, so the caller can stop writing and discard the partial blob.
    """

    def __init__(
        self,
        content_type: str | None,
        sink: BinaryIO,
        *,
        max_file_bytes: int,
        file_field: str = FILE_FIELD,
    ) -> None:
        self.sink = sink
        self.max_file_bytes = max_file_bytes
        self.file_field = file_field
        self.form = UploadForm()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._mode: str | None = None  # "file", "field" or None (ignored part)
        self._field_name = ""
        self._field_value = bytearray()
        self._ended = False
        self._parser = MultipartParser(
            multipart_boundary(content_type),
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    # -- public -----------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise UploadMalformed(f"Malformed multipart body: {exc}", param="file") from exc

    def finish(self) -> UploadForm:
        try:
            self._parser.finalize()
        except FormParserError as exc:
            raise UploadMalformed(f"Malformed multipart body: {exc}", param="file") from exc
        if not self._ended:
            raise UploadMalformed(
                "The multipart body ended before its closing boundary.", param="file"
            )
        return self.form

    # -- parser callbacks -------------------------------------------------

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._mode = None

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        name = bytes(self._header_field).decode("latin-1").strip().lower()
        self._headers[name] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        # latin-1 maps bytes 1:1, so the options come back as the raw bytes.
        disposition = self._headers.get("content-disposition", b"").decode("latin-1")
        _, options = parse_options_header(disposition)
        name = options.get(b"name", b"").decode("utf-8", errors="replace")
        if name == self.file_field:
            if self.form.filename is not None:
                raise UploadMalformed("Send exactly one file.", param=self.file_field)
            raw_filename = options.get(b"filename")
            self.form.filename = safe_filename(
                raw_filename.decode("utf-8", errors="replace") if raw_filename else None
            )
            ctype = self._headers.get("content-type")
            self.form.file_content_type = ctype.decode("latin-1").strip() if ctype else None
            self._mode = "file"
        elif name:
            if len(self.form.fields) >= MAX_FIELDS:
                raise UploadMalformed("Too many form fields.")
            self._mode = "field"
            self._field_name = name
            self._field_value = bytearray()
        else:
            self._mode = None

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._mode == "file":
            size = end - start
            if self.form.file_bytes + size > self.max_file_bytes:
                raise UploadTooLarge()
            self.sink.write(data[start:end])
            self.form.file_bytes += size
        elif self._mode == "field":
            self._field_value += data[start:end]
            if len(self._field_value) > MAX_FIELD_BYTES:
                raise UploadMalformed(
                    f"Form field {self._field_name!r} is too long.", param=self._field_name
                )

    def _on_part_end(self) -> None:
        if self._mode == "field":
            try:
                value = bytes(self._field_value).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UploadMalformed(
                    f"Form field {self._field_name!r} is not UTF-8.", param=self._field_name
                ) from exc
            self.form.fields[self._field_name] = value
        self._mode = None

    def _on_end(self) -> None:
        self._ended = True
