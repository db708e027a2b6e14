"""Bad input gets a typed error naming the field and the value; nothing is half-built."""

from __future__ import annotations

import pytest

from kvspec.cli import main
from kvspec.config import Config
from kvspec.errors import InvalidArgument, InvalidDefinition
from kvspec.policy import get_policy
from kvspec.spec.invariants import get_property
from kvspec.spec.registry import ActionRegistry, Outcome, Param
from kvspec.spec.trace import Trace


@pytest.mark.parametrize("field,value,needle", [
    ("tokens_per_block", 0, "tokens_per_block=0"),
    ("tokens_per_block", -3, "tokens_per_block=-3"),
    ("num_gpu_pages", -1, "num_gpu_pages=-1"),
    ("num_host_pages", -2, "num_host_pages=-2"),
    ("max_util_for_resume", 0, "max_util_for_resume=0.0"),
    ("max_util_for_resume", 1.5, "max_util_for_resume=1.5"),
    ("num_requests", 0, "num_requests=0"),
    ("tokens_per_block", 2.5, "tokens_per_block=2.5"),
])
def test_invalid_config_names_field_and_value(field: str, value: object, needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle.replace(".", r"\.")):
        Config(**{field: value})  # type: ignore[arg-type]


def test_unknown_policy_and_invariant_list_the_known_names() -> None:
    with pytest.raises(InvalidArgument, match="pr13805-reviewed"):
        get_policy("pr99999")
    with pytest.raises(InvalidArgument, match="NO-DEFERRED-HOLD"):
        get_property("NO-SUCH-THING")
    with pytest.raises(InvalidArgument, match="unknown policy switch"):
        get_policy("pr13805").replace(revert_everything=True)


def test_registry_refuses_duplicates_and_reserved_parameter_names() -> None:
    reg = ActionRegistry()

    def guard(c: object, s: object, r: int) -> bool:
        return True

    @reg.action(guard=guard)
    def act(c: object, s: object, r: int) -> Outcome:
        raise AssertionError

    with pytest.raises(InvalidDefinition, match="declared twice"):
        reg.action(guard=guard)(act)
    with pytest.raises(InvalidDefinition, match="must not be 'r'"):
        @reg.action(guard=guard, params=(Param("r"),))
        def other(c: object, s: object, r: int) -> Outcome:
            raise AssertionError


def test_malformed_traces_are_refused_with_the_line() -> None:
    with pytest.raises(InvalidArgument, match="empty trace"):
        Trace.from_jsonl("")
    with pytest.raises(InvalidArgument, match="line 1"):
        Trace.from_jsonl("{not json")
    with pytest.raises(InvalidArgument, match="format"):
        Trace.from_jsonl('{"format": "other"}')


def test_cli_bad_input_exits_2_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prove", "--policy", "nope"]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
    assert main(["prove", "--invariant", "NOPE"]) == 2
    assert main(["replay", "/no/such/trace.jsonl"]) == 2
    assert main(["check", "--impl", "nocolon"]) == 2


def test_cli_prove_one_cell_json(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["prove", "--policy", "pr14849", "--invariant", "NO-DEFERRED-HOLD",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    cell = out["cells"][0]
    assert cell["status"] == "REFUTED" and cell["length"] == 5
