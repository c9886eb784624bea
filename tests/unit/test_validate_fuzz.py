"""Fuzzing the validator: it never raises, and it names exactly the bad lines."""

from __future__ import annotations

from itertools import pairwise

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.jsonl import iter_chunk_lines
from tasks.validate import validate_jsonl

CHAT = "/v1/chat/completions"
FILE_LEVEL = {"empty_file"}
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_LINE = 50_000


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in pairwise(points)]


def line_count(data: bytes) -> int:
    if not data:
        return 0
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


raw_files = st.one_of(
    st.binary(max_size=2000),
    st.lists(
        st.sampled_from(
            [b"\n", b"\r\n", b"\xef\xbb\xbf", b"{", b"}", b"[", b"]", b'"', b"\xff", b" ", b"x"]
        )
        | st.binary(max_size=20),
        max_size=200,
    ).map(b"".join),
)


@FUZZ
@given(data=raw_files, cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_random_bytes_never_raise_and_errors_point_into_the_file(
    data: bytes, cuts: list[int]
) -> None:
    whole = validate_jsonl([data], CHAT, chunk_size=3)
    assert validate_jsonl(split_at(data, cuts), CHAT, chunk_size=3) == whole
    lines = line_count(data)
    assert len(whole.errors) <= 100
    for error in whole.errors:
        if error.code in FILE_LEVEL:
            assert error.line is None
        else:
            assert error.line is not None
            assert 1 <= error.line <= lines
            assert error.message.startswith(f"Line {error.line}: ")
    if not whole.errors:
        assert sum(c.line_count for c in whole.chunks) == whole.total > 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
bodies = st.fixed_dictionaries(
    {"model": st.text(min_size=1, max_size=12)}, optional={"extra": json_values}
)
blank = st.sampled_from([b"", b" ", b"\t", b"  \t ", b"\x0c"])

# Each corrupt kind is a function of the custom_ids used so far -> the bad line.
garbage = st.binary(max_size=60).filter(lambda b: b"\n" not in b).map(lambda b: b"{" + b)
deep_array = st.integers(1025, 10_000).map(lambda d: b"[" * d + b"]" * d)
deep_body = st.integers(1025, 5_000).map(
    lambda d: (
        b'{"custom_id":"deep","method":"POST","url":"%s","body":{"x":%s%s}}'
        % (CHAT.encode(), b"[" * d, b"]" * d)
    )
)
bad_utf8 = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x28\x8c"]).map(
    lambda bad: (
        b'{"custom_id":"u","method":"POST","url":"%s","body":{"m":"%s"}}' % (CHAT.encode(), bad)
    )
)
huge = st.integers(MAX_LINE + 1, 3 * MAX_LINE).map(lambda n: b'{"pad":"' + b"a" * n + b'"}')
wrong_url = st.sampled_from(["/v1/embeddings", "/v1/chat/completions/", ""]).map(
    lambda url: orjson.dumps({"custom_id": "w", "method": "POST", "url": url, "body": {}})
)
missing = st.sampled_from(["custom_id", "method", "url", "body"]).map(
    lambda field: orjson.dumps(
        {
            k: v
            for k, v in {"custom_id": "m", "method": "POST", "url": CHAT, "body": {}}.items()
            if k != field
        }
    )
)
corrupt = st.one_of(garbage, deep_array, deep_body, bad_utf8, huge, wrong_url, missing)

kinds = st.lists(
    st.one_of(
        st.tuples(st.just("valid"), bodies),
        st.tuples(st.just("blank"), blank),
        st.tuples(st.just("corrupt"), corrupt),
        st.tuples(st.just("dup"), st.integers(min_value=0)),
    ),
    max_size=40,
)


@FUZZ
@given(
    plan=kinds,
    crlf=st.booleans(),
    bom=st.booleans(),
    trailing=st.booleans(),
    chunk_size=st.integers(1, 7),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
)
def test_generated_files_report_exactly_their_bad_lines(
    plan: list[tuple[str, object]],
    crlf: bool,
    bom: bool,
    trailing: bool,
    chunk_size: int,
    cuts: list[int],
) -> None:
    rows: list[bytes] = []
    bad: list[int] = []
    dup_lines: list[int] = []
    good: list[bytes] = []
    ids: list[str] = []
    for kind, value in plan:
        if kind == "valid":
            cid = f"id-{len(ids)}-é✓"
            ids.append(cid)
            rows.append(
                orjson.dumps({"custom_id": cid, "method": "POST", "url": CHAT, "body": value})
            )
            good.append(rows[-1])
        elif kind == "blank":
            rows.append(value)
        elif kind == "corrupt":
            rows.append(value)
            bad.append(len(rows))
        elif ids:  # "dup": reuse the id of an earlier valid line
            cid = ids[value % len(ids)]
            rows.append(orjson.dumps({"custom_id": cid, "method": "POST", "url": CHAT, "body": {}}))
            bad.append(len(rows))
            dup_lines.append(len(rows))
    sep = b"\r\n" if crlf else b"\n"
    data = (b"\xef\xbb\xbf" if bom else b"") + sep.join(rows) + (sep if trailing and rows else b"")

    result = validate_jsonl(
        split_at(data, cuts), CHAT, chunk_size=chunk_size, max_line_bytes=MAX_LINE
    )

    requests = sum(1 for row in rows if row.strip())
    if requests == 0:
        assert [(e.code, e.line) for e in result.errors] == [("empty_file", None)]
        return
    assert result.total == requests
    assert [e.line for e in result.errors] == bad
    assert [e.line for e in result.errors if e.code == "duplicate_custom_id"] == dup_lines
    assert sum(c.line_count for c in result.chunks) == requests
    if not bad:
        assert result.ok
        lines = [
            raw
            for chunk in result.chunks
            for _, raw in iter_chunk_lines(data[chunk.start_offset : chunk.end_offset])
        ]
        assert lines == good
