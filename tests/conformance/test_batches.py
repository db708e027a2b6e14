"""Batches (issue 10, deliverable 2): the lockstep sends an iteration's forwards as one
update call per kind, in a shuffled order, and the model checks a batch is its requests one
by one."""

from __future__ import annotations

from typing import Any

from kvspec.config import Config
from kvspec.conformance import broken, impls
from kvspec.conformance.adapter import Factory
from kvspec.conformance.check import run_check
from kvspec.conformance.lockstep import Lockstep, run_steps
from kvspec.conformance.report import Divergence
from kvspec.policy import get_policy

POLICY = get_policy("pr13805-reviewed")
CONFIG = Config(num_requests=2, tokens_per_block=1, num_gpu_pages=8, num_host_pages=0,
                max_prompt_len=1, max_draft_len=1)


def _steps(first: int, second: int) -> list[tuple[str, int, dict[str, Any]]]:
    """Two one-token prompts run together, then one generation step each, ``first`` with one
    accepted draft and ``second`` with none, forwarded in that order."""
    return [("arrive", 0, dict(prompt_len=1, chunk_size=1, draft_len=1)),
            ("arrive", 1, dict(prompt_len=1, chunk_size=1, draft_len=1)),
            ("prepare_context", 0, {}), ("resize_context", 0, {}),
            ("prepare_context", 1, {}), ("resize_context", 1, {}),
            ("decide", 0, dict(wait=False, can_queue=True)),
            ("forward", 0, dict(accepted=0)), ("forward", 1, dict(accepted=0)),
            ("end_iteration", 0, {}),
            ("try_allocate_generation", 0, {}), ("try_allocate_generation", 1, {}),
            ("decide", 0, dict(wait=False, can_queue=True)),
            ("forward", first, dict(accepted=1)), ("forward", second, dict(accepted=0)),
            ("end_iteration", 0, {})]


def _run(factory: Factory, steps: list[tuple[str, int, dict[str, Any]]],
         batch: bool = True) -> Divergence | None:
    lock = Lockstep(factory, CONFIG, POLICY, batch_forward=batch)
    for name, r, args in steps:
        div = lock.step(name, r, dict(args))
        if div is not None:
            return div
    return lock.final_check()


class CountsCalls(impls.CheckedReference):
    """The reference, recording the requests of every update call."""

    def __init__(self, config: Config, policy: Any) -> None:
        super().__init__(config, policy)
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def update_context_resources(self, reqs: Any) -> None:
        self.calls.append(("context", tuple(q.request_id for q in reqs)))
        super().update_context_resources(reqs)

    def update_resources(self, reqs: Any, accepted: Any) -> None:
        self.calls.append(("generation", tuple(q.request_id for q in reqs)))
        super().update_resources(reqs, accepted)


def test_an_iterations_forwards_go_out_as_one_call_per_kind() -> None:
    made: list[CountsCalls] = []

    def factory(config: Config, policy: Any) -> CountsCalls:
        made.append(CountsCalls(config, policy))
        return made[-1]

    assert _run(factory, _steps(1, 0)) is None
    calls = made[0].calls
    assert [kind for kind, _ in calls] == ["context", "generation"]
    assert all(sorted(ids) == [0, 1] for _, ids in calls)
    assert _run(factory, _steps(1, 0), batch=False) is None
    assert len(made[1].calls) == 4  # one call per forward


def test_accepted_counts_paired_by_id_are_caught_when_the_batch_is_not_in_id_order() -> None:
    assert _run(broken.accepted_in_request_order, _steps(0, 1)) is None  # sent as r=0, r=1
    div = _run(broken.accepted_in_request_order, _steps(1, 0))
    assert div is not None and div.index == 15
    assert div.action.startswith("forward batch [forward(r=1, accepted=1), forward(r=0,")
    assert "sent in the order r=1, r=0" in div.action
    assert {d.name for d in div.diffs} >= {"r0.history", "r1.history"}
    # the shrunk trace replays: the same steps send the same batch in the same order
    assert run_steps(broken.accepted_in_request_order, CONFIG, POLICY, div.trace.steps) \
        is not None


def test_a_batch_bug_is_invisible_one_request_at_a_time() -> None:
    rep = run_check(broken.first_context_only, POLICY, examples=40, walk_length=120,
                    tiers=("walker",))
    assert not rep.ok and rep.divergence is not None
    assert rep.divergence.action.startswith("forward batch")
    one_by_one = _run(broken.first_context_only, _steps(1, 0), batch=False)
    assert one_by_one is None
