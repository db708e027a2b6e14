"""Traces are checked on load: every bad field is an InvalidArgument naming the line, the field
and the value, and nothing a loader is fed (random bytes, truncated or mutated traces, JSON of
the wrong type) raises anything but a KVSpecError."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sample_traces import HOLD, HOLD_TRACE

from kvspec.config import Config
from kvspec.errors import InvalidArgument, KVSpecError
from kvspec.policy import get_policy
from kvspec.spec.trace import Step, Trace, verify_trace, with_digests

TRACE = HOLD_TRACE
TEXT = TRACE.to_jsonl()
LINES = TEXT.splitlines()


def _edit(line: int, change: Callable[[dict[str, Any]], object]) -> str:
    """TEXT with JSON line ``line`` (0: the header) edited in place by ``change``."""
    lines = list(LINES)
    obj = json.loads(lines[line])
    change(obj)
    lines[line] = json.dumps(obj)
    return "\n".join(lines) + "\n"


def _header(change: Callable[[dict[str, Any]], object]) -> str:
    return _edit(0, change)


def test_the_exported_trace_loads_back_identically() -> None:
    back = Trace.from_jsonl(TEXT)
    assert back == TRACE and back.to_jsonl() == TEXT
    assert verify_trace(back).fully_verified
    assert TRACE.violated == ("NO-DEFERRED-HOLD",)


def _set(d: dict[str, Any], path: str, value: object) -> None:
    *parents, last = path.split(".")
    for p in parents:
        d = d[p]
    d[last] = value


def _del(d: dict[str, Any], path: str) -> None:
    *parents, last = path.split(".")
    for p in parents:
        d = d[p]
    del d[last]


BAD_HEADERS = [
    # (what is changed, the edit, words the message must contain)
    ("no format", lambda h: _del(h, "format"), ["line 1", "'format'"]),
    ("other format", lambda h: _set(h, "format", "kvspec-trace/9"), ["format", "kvspec-trace/9"]),
    ("no policy", lambda h: _del(h, "policy"), ["line 1", "'policy'"]),
    ("no config", lambda h: _del(h, "config"), ["'config'"]),
    ("unknown header field", lambda h: _set(h, "violates", []), ["'violates'", "known"]),
    ("policy a number", lambda h: _set(h, "policy", 3), ["policy=3", "JSON number"]),
    ("policy unknown preset", lambda h: _set(h, "policy", "pr1"), ["policy=\"pr1\"", "preset"]),
    ("unknown switch", lambda h: _set(h, "policy.revert_all", True), ["'revert_all'"]),
    ("missing switch", lambda h: _del(h, "policy.host_tier"), ["host_tier"]),
    ("switch not bool", lambda h: _set(h, "policy.host_tier", 1),
     ["policy.host_tier=1", "true or false"]),
    ("policy name not text", lambda h: _set(h, "policy.name", 5), ["policy.name=5"]),
    ("config an array", lambda h: _set(h, "config", [1]), ["config=[1]", "JSON array"]),
    ("config missing G", lambda h: _del(h, "config.num_gpu_pages"), ["num_gpu_pages", "lacks"]),
    ("config unknown field", lambda h: _set(h, "config.pages", 3), ["'pages'"]),
    ("config int as string", lambda h: _set(h, "config.num_gpu_pages", "4"),
     ["config.num_gpu_pages=\"4\"", "integer"]),
    ("config int as bool", lambda h: _set(h, "config.tokens_per_block", True),
     ["config.tokens_per_block=true", "integer"]),
    ("config int as float", lambda h: _set(h, "config.num_requests", 2.5),
     ["config.num_requests=2.5"]),
    ("config bool as int", lambda h: _set(h, "config.attention_dp", 1),
     ["config.attention_dp=1", "true or false"]),
    ("fraction not parseable", lambda h: _set(h, "config.max_util_for_resume", "3//4"),
     ["config.max_util_for_resume=\"3//4\"", "fraction"]),
    ("fraction with exponent", lambda h: _set(h, "config.max_util_for_resume", "1e99999"),
     ["max_util_for_resume"]),
    ("fraction a list", lambda h: _set(h, "config.batch_wait_max_tokens_ratio", [0]),
     ["batch_wait_max_tokens_ratio"]),
    ("fraction zero denominator", lambda h: _set(h, "config.max_util_for_resume", "1/0"),
     ["max_util_for_resume"]),
    ("Config's own check", lambda h: _set(h, "config.num_gpu_pages", -1),
     ["line 1", "num_gpu_pages=-1", ">= 0"]),
    ("Config's fraction range", lambda h: _set(h, "config.max_util_for_resume", "3/2"),
     ["max_util_for_resume", "(0, 1]"]),
    ("violated not a list", lambda h: _set(h, "violated", "INV-LEN"), ["violated=\"INV-LEN\""]),
    ("violated unknown id", lambda h: _set(h, "violated", ["INV-FOO"]), ["\"INV-FOO\"", "known"]),
    ("source not text", lambda h: _set(h, "source", 7), ["source=7", "string"]),
    ("source a lone surrogate", lambda h: _set(h, "source", "\ud800"), ["source", "Unicode"]),
    ("abstract_rest not bool", lambda h: _set(h, "abstract_rest", "yes"),
     ["abstract_rest=\"yes\""]),
]


@pytest.mark.parametrize("what,change,needles", BAD_HEADERS, ids=[c[0] for c in BAD_HEADERS])
def test_bad_headers_name_the_field_and_value(what: str, change: Callable[[dict[str, Any]], object],
                                              needles: list[str]) -> None:
    with pytest.raises(InvalidArgument) as err:
        Trace.from_jsonl(_header(change), name="t.jsonl")
    msg = str(err.value)
    assert msg.startswith("t.jsonl line 1"), msg
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def _step(i: int, change: Callable[[dict[str, Any]], object]) -> str:
    return _edit(i + 1, change)


BAD_STEPS = [
    ("unknown action", 1, lambda d: _set(d, "action", "frobnicate"),
     ["line 3", "action=\"frobnicate\"", "known", "resize_context"]),
    ("action not text", 1, lambda d: _set(d, "action", 3), ["action=3"]),
    ("no action", 1, lambda d: _del(d, "action"), ["'action'"]),
    ("others outside the abstraction", 1, lambda d: d.update(action="others", args={}),
     ["abstract_rest"]),
    ("r a string", 1, lambda d: _set(d, "r", "0"), ["r=\"0\"", "integer"]),
    ("r a bool", 1, lambda d: _set(d, "r", False), ["r=false"]),
    ("r out of range", 1, lambda d: _set(d, "r", 2), ["r=2", "0..1", "num_requests=2"]),
    ("r negative", 1, lambda d: _set(d, "r", -1), ["r=-1"]),
    ("r missing", 1, lambda d: _del(d, "r"), ["prepare_context", "\"r\""]),
    ("global action with a slot", 3, lambda d: _set(d, "r", 1), ["decide", "global", "r=1"]),
    ("args a list", 0, lambda d: _set(d, "args", [1]), ["args=[1]", "prompt_len"]),
    ("unknown parameter", 0, lambda d: _set(d, "args.size", 1), ["'size'", "prompt_len"]),
    ("missing parameter", 0, lambda d: _del(d, "args.chunk_size"), ["chunk_size"]),
    ("victims of the wrong length", 1, lambda d: _set(d, "args.demote", [0]),
     ["line 3", "args.demote=[0]", "list of 2 page counts", "num_requests"]),
    ("negative victims", 1, lambda d: _set(d, "args.demote", [0, -1]),
     ["args.demote=[0, -1]", ">= 0"]),
    ("string where a number belongs", 0, lambda d: _set(d, "args.prompt_len", "1"),
     ["args.prompt_len=\"1\"", "integer"]),
    ("float where an int belongs", 0, lambda d: _set(d, "args.prompt_len", 1.0),
     ["args.prompt_len=1.0"]),
    ("bool where an int belongs", 0, lambda d: _set(d, "args.draft_len", True),
     ["args.draft_len=true"]),
    ("int where a bool belongs", 3, lambda d: _set(d, "args.wait", 1),
     ["args.wait=1", "true or false"]),
    ("result a string", 1, lambda d: _set(d, "result", "True"), ["result=\"True\""]),
    ("result a number", 1, lambda d: _set(d, "result", 1), ["result=1"]),
    ("digest a number", 1, lambda d: _set(d, "digest", 12), ["digest=12", "string"]),
    ("index out of order", 1, lambda d: _set(d, "i", 7), ["i=7", "expected 1"]),
    ("index a string", 1, lambda d: _set(d, "i", "1"), ["i=\"1\""]),
    ("unknown step field", 1, lambda d: _set(d, "note", "x"), ["'note'"]),
]


@pytest.mark.parametrize("what,index,change,needles", BAD_STEPS, ids=[c[0] for c in BAD_STEPS])
def test_bad_steps_name_the_line_field_and_value(what: str, index: int,
                                                 change: Callable[[dict[str, Any]], object],
                                                 needles: list[str]) -> None:
    with pytest.raises(InvalidArgument) as err:
        Trace.from_jsonl(_step(index, change), name="t.jsonl")
    msg = str(err.value)
    assert msg.startswith(f"t.jsonl line {index + 2}:"), msg
    for needle in needles:
        assert needle in msg, (needle, msg)


@pytest.mark.parametrize("text,needles", [
    ("", ["empty trace"]),
    ("\n  \n", ["empty trace"]),
    ("{not json", ["line 1", "not valid JSON"]),
    ("[1, 2]", ["line 1", "JSON array"]),
    ("3", ["line 1", "JSON number"]),
    ("null", ["JSON null"]),
    ('"kvspec-trace/2"', ["JSON string"]),
    (LINES[0].replace("3/4", "NaN").replace('"NaN"', "NaN"), ["not valid JSON", "NaN"]),
    ('{"format": "kvspec-trace/2", "format": "x"}', ["duplicate key 'format'"]),
    ("[" * 100_000, ["line 1"]),
    (LINES[0] + "\n[1]", ["line 2", "JSON array"]),
    (LINES[0] + "\n\n" + LINES[1] + "\n{", ["line 4", "not valid JSON"]),
])
def test_malformed_text_is_refused_with_the_line(text: str, needles: list[str]) -> None:
    with pytest.raises(InvalidArgument) as err:
        Trace.from_jsonl(text)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_optional_fields_may_be_left_out() -> None:
    """A hand-written trace: a preset by name, steps without i, result, digest, and r for
    global actions; it loads and replays (unverified)."""
    header = {"format": "kvspec-trace/2", "policy": "pr14849",
              "config": json.loads(LINES[0])["config"]}
    steps = [{"action": s.action, **({"r": s.r} if s.action not in ("decide", "end_iteration")
                                     else {}), "args": s.args} for s in HOLD]
    text = "\n".join(json.dumps(x) for x in [header, *steps]) + "\n"
    t = Trace.from_jsonl(text)
    assert t.policy == get_policy("pr14849") and t.violated == () and t.source == ""
    assert [s.action for s in t.steps] == [s.action for s in HOLD]
    check = verify_trace(t)
    assert check.ok and not check.fully_verified
    assert check.unclaimed == ("NO-DEFERRED-HOLD",)


def test_args_are_kept_in_declaration_order() -> None:
    t = Trace.from_jsonl(TEXT)  # the file has them sorted: chunk_size, draft_len, prompt_len
    assert list(t.steps[0].args) == ["prompt_len", "chunk_size", "draft_len"]


def test_abstract_traces_may_use_others() -> None:
    steps = (Step("others", 0, {"delta": 1, "evictable": 0, "host_delta": 0}),)
    t = with_digests(Trace(get_policy("pr14849"), Config(), steps, abstract_rest=True))
    assert Trace.from_jsonl(t.to_jsonl()) == t


# ---- files ----------------------------------------------------------------------------------


def test_load_refuses_directories_missing_and_unreadable_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidArgument, match="is a directory"):
        Trace.load(tmp_path)
    with pytest.raises(InvalidArgument, match="does not exist"):
        Trace.load(tmp_path / "nope.jsonl")
    with pytest.raises(InvalidArgument, match="cannot be read"):
        Trace.load("bad\x00name.jsonl")
    p = tmp_path / "t.jsonl"
    p.write_text(TEXT)
    assert Trace.load(p) == TRACE

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(InvalidArgument, match="not readable .permission denied"):
        Trace.load(p)


@pytest.mark.parametrize("data,needle", [
    (b"\x7fELF\x02\x01\x01\x00\x00", "binary data (a NUL byte at offset 7)"),
    (b"{\xff\xfe}", "not UTF-8 text (byte 0xff at offset 1)"),
    (TEXT.encode("utf-16"), "UTF-16 text"),
    (b"\xfe\xff\x00{", "not UTF-8"),
])
def test_binary_and_non_utf8_files(tmp_path: Path, data: bytes, needle: str) -> None:
    p = tmp_path / "t.jsonl"
    p.write_bytes(data)
    with pytest.raises(InvalidArgument) as err:
        Trace.load(p)
    assert str(err.value).startswith(str(p)) and needle in str(err.value)


def test_a_byte_order_mark_is_accepted() -> None:
    assert Trace.from_bytes(b"\xef\xbb\xbf" + TEXT.encode()) == TRACE


# ---- fuzzing: nothing but KVSpecError ----------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=6)
"""Any JSON value."""


def _accepts_or_refuses(text: str | bytes) -> None:
    """Load; a refusal must be a KVSpecError, and an accepted trace must round-trip, render
    and verify without raising (on small configs: the model enumerates argument tuples)."""
    try:
        t = Trace.from_bytes(text) if isinstance(text, bytes) else Trace.from_jsonl(text)
    except KVSpecError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert Trace.from_jsonl(t.to_jsonl()) == t
    t.path()
    k = t.config
    if k.max_prompt_len <= 8 and k.max_draft_len <= 3 and k.num_requests <= 4 \
            and k.num_gpu_pages <= 64 and k.num_host_pages <= 64:
        verify_trace(t).render("fuzz")
        t.table()
        t.program()


@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    _accepts_or_refuses(data)


@given(st.integers(0, len(TEXT)), st.binary(max_size=4))
def test_fuzz_truncated_traces(cut: int, tail: bytes) -> None:
    _accepts_or_refuses(TEXT[:cut])
    _accepts_or_refuses(TEXT.encode()[:cut] + tail)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into nested dicts and lists (the object itself: ())."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


@given(st.data())
def test_fuzz_single_field_mutations(data: st.DataObject) -> None:
    """One field of one line (header or step) replaced by any JSON value, deleted, or a key
    added; or the whole line replaced by any JSON value."""
    n = data.draw(st.integers(0, len(LINES) - 1), label="line")
    obj = json.loads(LINES[n])
    path = data.draw(st.sampled_from(_paths(obj)), label="path")
    how = data.draw(st.sampled_from(["replace", "delete", "add"]), label="how")
    value = data.draw(JSON, label="value")
    if not path:
        obj = value
    else:
        parent = obj
        for p in path[:-1]:
            parent = parent[p]
        if how == "delete":
            del parent[path[-1]]
        elif how == "add" and isinstance(parent, dict):
            parent[data.draw(st.text(max_size=6), label="key")] = value
        else:
            parent[path[-1]] = value
    lines = list(LINES)
    lines[n] = json.dumps(obj)
    _accepts_or_refuses("\n".join(lines) + "\n")


@given(st.lists(st.sampled_from(LINES[1:]) | JSON.map(json.dumps), max_size=6))
def test_fuzz_step_sequences(steps: list[str]) -> None:
    """Steps in any order (valid ones shuffled, repeated, or any JSON): load or refuse."""
    _accepts_or_refuses("\n".join([LINES[0], *steps]) + "\n")
