"""The batch input validator: every input-line rule, with exact line numbers."""

from __future__ import annotations

import itertools
import tracemalloc
from itertools import pairwise

import orjson
import pytest

from storage.jsonl import iter_chunk_lines
from tasks.validate import ChunkSpan, LineError, validate_jsonl

CHAT = "/v1/chat/completions"


def request(i: int, **changes: object) -> dict:
    obj: dict = {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": CHAT,
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hi {i}"}]},
    }
    for key, value in changes.items():
        if value is _DROP:
            obj.pop(key)
        else:
            obj[key] = value
    return obj


_DROP = object()


def line(obj: object) -> bytes:
    return orjson.dumps(obj)


def jsonl(lines: list[bytes], *, sep: bytes = b"\n", trailing: bool = True) -> bytes:
    return sep.join(lines) + (sep if trailing else b"")


def blocks_of(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def validate(data: bytes, block: int = 1 << 20, **kwargs):
    return validate_jsonl(blocks_of(data, block), CHAT, **kwargs)


def error_lines(result) -> list[int | None]:
    return [e.line for e in result.errors]


def test_valid_file_passes_with_counts_chunks_and_models() -> None:
    lines = [line(request(i)) for i in range(5)]
    lines[3] = line(request(3, body={"model": "other/model"}))
    result = validate(jsonl(lines), chunk_size=2)
    assert result.ok
    assert result.errors == []
    assert result.total == 5
    assert [c.line_count for c in result.chunks] == [2, 2, 1]
    assert [c.first_line for c in result.chunks] == [1, 3, 5]
    assert result.models == ["gpt-4o-mini", "other/model"]


BAD_LINES = [
    pytest.param(b"{not json", "invalid_json_line", None, id="broken-json"),
    pytest.param(b'["a", "list"]', "invalid_json_line", None, id="array-not-object"),
    pytest.param(b'"a string"', "invalid_json_line", None, id="string-not-object"),
    pytest.param(b"42", "invalid_json_line", None, id="number-not-object"),
    pytest.param(b'{"custom_id": "x"} trailing', "invalid_json_line", None, id="trailing-garbage"),
    pytest.param(b'{"a": NaN}', "invalid_json_line", None, id="nan"),
    pytest.param(b'{"custom_id": "\xff\xfe"}', "invalid_json_line", None, id="invalid-utf8"),
    pytest.param(b"[" * 10_000 + b"]" * 10_000, "invalid_json_line", None, id="deep-nesting"),
    pytest.param(
        line(request(9, custom_id=_DROP)), "missing_required_parameter", "custom_id", id="no-id"
    ),
    pytest.param(
        line(request(9, custom_id=None)), "missing_required_parameter", "custom_id", id="null-id"
    ),
    pytest.param(
        line(request(9, custom_id="")), "missing_required_parameter", "custom_id", id="empty-id"
    ),
    pytest.param(line(request(9, custom_id=7)), "invalid_request", "custom_id", id="int-id"),
    pytest.param(
        line(request(9, method=_DROP)), "missing_required_parameter", "method", id="no-method"
    ),
    pytest.param(line(request(9, method="GET")), "invalid_method", "method", id="get"),
    pytest.param(line(request(9, method="post")), "invalid_method", "method", id="lowercase"),
    pytest.param(line(request(9, url=_DROP)), "missing_required_parameter", "url", id="no-url"),
    pytest.param(line(request(9, url="/v1/embeddings")), "invalid_url", "url", id="other-url"),
    pytest.param(line(request(9, url=5)), "invalid_url", "url", id="int-url"),
    pytest.param(line(request(9, body=_DROP)), "missing_required_parameter", "body", id="no-body"),
    pytest.param(line(request(9, body=None)), "missing_required_parameter", "body", id="null-body"),
    pytest.param(line(request(9, body="text")), "invalid_body", "body", id="string-body"),
    pytest.param(line(request(9, body=[1])), "invalid_body", "body", id="list-body"),
    pytest.param(line(request(0)), "duplicate_custom_id", "custom_id", id="duplicate"),
]


@pytest.mark.parametrize(("bad", "code", "param"), BAD_LINES)
def test_each_rule_reports_the_bad_line_only(bad: bytes, code: str, param: str | None) -> None:
    data = jsonl([line(request(0)), bad, line(request(2))])
    result = validate(data)
    assert not result.ok
    assert len(result.errors) == 1
    error = result.errors[0]
    assert (error.code, error.param, error.line) == (code, param, 2)
    assert error.message.startswith("Line 2: ")
    assert result.total == 3


def test_five_bad_lines_in_twenty_are_reported_exactly_in_order() -> None:
    lines = [line(request(i)) for i in range(20)]
    bad = {
        3: b"{oops",
        7: line(request(6, url="/v1/embeddings")),
        11: line(request(10, method="PUT")),
        15: line(request(4)),  # the id of line 5
        19: line(request(18, body=_DROP)),
    }
    for number, content in bad.items():
        lines[number - 1] = content
    result = validate(jsonl(lines))
    assert error_lines(result) == [3, 7, 11, 15, 19]
    assert [e.code for e in result.errors] == [
        "invalid_json_line",
        "invalid_url",
        "invalid_method",
        "duplicate_custom_id",
        "missing_required_parameter",
    ]


def test_url_mismatch_message_names_both_urls() -> None:
    data = jsonl([line(request(0)), line(request(1)), line(request(2, url="/v1/embeddings"))])
    (error,) = validate(data).errors
    assert error.message == (
        "Line 3: url '/v1/embeddings' does not match batch endpoint '/v1/chat/completions'"
    )
    assert error.as_dict() == {
        "code": "invalid_url",
        "message": error.message,
        "param": "url",
        "line": 3,
    }


def test_duplicate_names_the_line_where_the_id_first_appeared() -> None:
    data = jsonl([line(request(0)), line(request(1)), line(request(0)), line(request(0))])
    result = validate(data)
    assert error_lines(result) == [3, 4]
    assert all("line 1" in e.message for e in result.errors)
    assert all("'req-0'" in e.message for e in result.errors)


def test_duplicate_of_an_id_on_an_otherwise_bad_line_is_still_reported() -> None:
    """Fixing line 1's url alone would still leave two 'req-0': say so now."""
    data = jsonl([line(request(0, url="/v1/embeddings")), line(request(0))])
    result = validate(data)
    assert [(e.code, e.line) for e in result.errors] == [
        ("invalid_url", 1),
        ("duplicate_custom_id", 2),
    ]


def test_duplicate_of_a_long_custom_id_is_caught() -> None:
    long_id = "x" * 500
    data = jsonl([line(request(0, custom_id=long_id)), line(request(1, custom_id=long_id))])
    result = validate(data)
    assert [(e.code, e.line) for e in result.errors] == [("duplicate_custom_id", 2)]


def test_blank_lines_are_skipped_but_keep_their_line_numbers() -> None:
    data = jsonl([b"", line(request(0)), b"   ", b"\t", line(request(1, method="GET")), b""])
    result = validate(data)
    assert result.total == 2
    assert error_lines(result) == [5]
    assert result.errors[0].message.startswith("Line 5: ")


def test_crlf_line_endings_are_accepted() -> None:
    data = jsonl([line(request(i)) for i in range(3)] + [b"", b"{bad"], sep=b"\r\n")
    result = validate(data)
    assert result.total == 4
    assert [(e.code, e.line) for e in result.errors] == [("invalid_json_line", 5)]


def test_bom_at_file_start_is_accepted() -> None:
    data = b"\xef\xbb\xbf" + jsonl([line(request(0)), line(request(1))])
    result = validate(data)
    assert result.ok
    assert result.total == 2


def test_bom_elsewhere_is_invalid_json() -> None:
    data = jsonl([line(request(0)), b"\xef\xbb\xbf" + line(request(1))])
    assert [(e.code, e.line) for e in validate(data).errors] == [("invalid_json_line", 2)]


def test_missing_final_newline_is_fine() -> None:
    data = jsonl([line(request(0)), line(request(1))], trailing=False)
    result = validate(data)
    assert result.ok
    assert result.total == 2
    assert result.chunks[-1].end_offset == len(data)


def test_invalid_utf8_is_reported_on_its_own_line() -> None:
    data = jsonl([line(request(0)), b'{"custom_id": "\xc3\x28"}', line(request(2))])
    assert [(e.code, e.line) for e in validate(data).errors] == [("invalid_json_line", 2)]


@pytest.mark.parametrize(
    "data", [b"", b"\n", b"\n  \n\r\n\t\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\r\n"], ids=repr
)
def test_file_without_requests_is_empty_file(data: bytes) -> None:
    result = validate(data)
    assert result.total == 0
    assert result.chunks == []
    assert [e.as_dict() for e in result.errors] == [
        {
            "code": "empty_file",
            "message": "The input file contains no requests.",
            "param": None,
            "line": None,
        }
    ]


def test_error_list_stops_at_max_errors() -> None:
    data = jsonl([b"{bad"] * 150)
    result = validate(data)
    assert len(result.errors) == 100
    assert error_lines(result) == list(range(1, 101))
    small = validate(data, max_errors=3)
    assert error_lines(small) == [1, 2, 3]


def test_more_than_max_lines_is_one_too_many_requests_error() -> None:
    data = jsonl([line(request(i)) for i in range(8)])
    result = validate(data, max_lines=5)
    assert [(e.code, e.line) for e in result.errors] == [("too_many_requests", 6)]
    assert "5" in result.errors[0].message
    assert result.errors[0].message.startswith("Line 6: ")
    assert result.total == 5
    assert validate(jsonl([line(request(i)) for i in range(5)]), max_lines=5).ok


def test_too_many_requests_comes_after_earlier_line_errors() -> None:
    lines = [line(request(i)) for i in range(8)]
    lines[1] = b"{bad"
    result = validate(jsonl(lines), max_lines=5)
    assert [(e.code, e.line) for e in result.errors] == [
        ("invalid_json_line", 2),
        ("too_many_requests", 6),
    ]


def test_over_long_line_is_reported_without_breaking_its_neighbours() -> None:
    long = line(request(1, body={"model": "m", "text": "y" * 5000}))
    data = jsonl([line(request(0)), long, line(request(2))])
    results = [validate(data, block, max_line_bytes=1000) for block in (1, 7, 333, 1 << 20)]
    assert all(r == results[0] for r in results)
    assert [(e.code, e.line) for e in results[0].errors] == [("invalid_json_line", 2)]
    assert results[0].total == 3
    assert validate(data, max_line_bytes=len(long) + 1).ok


MIXED = b"\xef\xbb\xbf" + jsonl(
    [
        line(request(0)),
        b"",
        line(request(1)),
        b"{bad",
        line(request(3, url="/v1/responses")),
        b"  ",
        line(request(0)),
        b'{"custom_id": "\xff"}',
    ]
    + [line(request(i)) for i in range(10, 25)],
    sep=b"\r\n",
    trailing=False,
)


@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_block_size_never_changes_the_result(chunk_size: int) -> None:
    results = [validate(MIXED, block, chunk_size=chunk_size) for block in (1, 7, 1 << 20)]
    assert results[0] == results[1] == results[2]
    assert error_lines(results[0]) == [4, 5, 7, 8]
    assert results[0].total == 21


def assert_chunks_slice_back(data: bytes, result, lines_by_number: dict[int, bytes]) -> None:
    """Each chunk's byte range yields exactly its request lines, in order."""
    seen: list[bytes] = []
    for chunk in result.chunks:
        got = list(iter_chunk_lines(data[chunk.start_offset : chunk.end_offset]))
        assert [i for i, _ in got] == list(range(chunk.line_count))
        assert got[0][1] == lines_by_number[chunk.first_line]
        seen.extend(raw for _, raw in got)
    assert seen == list(lines_by_number.values())


@pytest.mark.parametrize("sep", [b"\n", b"\r\n"])
@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("trailing", [False, True])
def test_chunk_spans_slice_back_to_exactly_their_lines(
    sep: bytes, bom: bool, trailing: bool
) -> None:
    rows: list[bytes] = []
    lines_by_number: dict[int, bytes] = {}
    for i in range(11):
        if i % 4 == 1:
            rows.append(b" ")
        rows.append(line(request(i)))
        lines_by_number[len(rows)] = rows[-1]
    data = (b"\xef\xbb\xbf" if bom else b"") + jsonl(rows, sep=sep, trailing=trailing)
    result = validate(data, chunk_size=4)
    assert result.ok
    assert [c.index for c in result.chunks] == [0, 1, 2]
    assert [c.line_count for c in result.chunks] == [4, 4, 3]
    assert sum(c.line_count for c in result.chunks) == result.total == 11
    assert result.chunks[0].start_offset == (3 if bom else 0)
    assert result.chunks[-1].end_offset == len(data)
    assert all(a.end_offset <= b.start_offset for a, b in pairwise(result.chunks))
    assert_chunks_slice_back(data, result, lines_by_number)


def test_chunk_span_fields() -> None:
    first, second, third = line(request(0)), line(request(1)), line(request(2))
    data = jsonl([first, b"", second, third])
    result = validate(data, chunk_size=2)
    assert result.chunks == [
        ChunkSpan(0, 0, len(first) + 2 + len(second) + 1, 1, 2),
        ChunkSpan(1, len(data) - len(third) - 1, len(data), 4, 1),
    ]


def test_iter_chunk_lines_skips_blanks_and_strips_terminators() -> None:
    got = list(iter_chunk_lines(b'\xef\xbb\xbf{"a":1}\r\n\r\n  \n{"b":2}\n{"c":3}'))
    assert got == [(0, b'{"a":1}'), (1, b'{"b":2}'), (2, b'{"c":3}')]


def test_models_are_distinct_in_first_seen_order_and_capped() -> None:
    names = ["b", "a", "b", "c", "a"]
    data = jsonl([line(request(i, body={"model": m})) for i, m in enumerate(names)])
    assert validate(data).models == ["b", "a", "c"]
    many = jsonl([line(request(i, body={"model": f"m{i}"})) for i in range(150)])
    models = validate(many).models
    assert models == [f"m{i}" for i in range(100)]


def test_every_line_error_message_starts_with_its_line() -> None:
    result = validate(MIXED)
    for error in result.errors:
        assert isinstance(error, LineError)
        assert error.message.startswith(f"Line {error.line}: ")


def endless_valid_lines(start: int = 0):
    i = start
    while True:
        yield line(request(i)) + b"\n"
        i += 1


def test_reading_stops_at_the_error_cap_on_an_endless_stream() -> None:
    blocks = itertools.chain([b"{bad\n", b"{bad\n"], endless_valid_lines())
    result = validate_jsonl(blocks, CHAT, max_errors=2)
    assert error_lines(result) == [1, 2]


def test_reading_stops_past_max_lines_on_an_endless_stream() -> None:
    result = validate_jsonl(endless_valid_lines(), CHAT, max_lines=50)
    assert result.total == 50
    assert [(e.code, e.line) for e in result.errors] == [("too_many_requests", 51)]


def test_an_over_long_line_is_never_held_in_memory() -> None:
    mib = b"a" * (1 << 20)

    def stream():
        yield b'{"pad": "'
        for _ in range(48):  # a 48 MiB line, in 1 MiB blocks
            yield mib
        yield b'"}\n' + line(request(1)) + b"\n"

    tracemalloc.start()
    try:
        result = validate_jsonl(stream(), CHAT, max_line_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(e.code, e.line) for e in result.errors] == [("invalid_json_line", 1)]
    assert result.total == 2
    assert peak < 8 << 20
