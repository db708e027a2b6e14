"""Small-scope exhaustive conformance: every reachable model state of a small config, one
shortest behaviour per state, every behaviour replayed on an implementation (a generated
conformance suite in the style of MongoDB's model-based trace checking).

BFS uses ``Model.enabled_steps`` (every argument tuple). Symmetry reduction: request slots are
interchangeable (every action treats them alike), so a state's key sorts its request records.
Sticky ghost violation flags are dropped from the key (no guard reads them). Each state keeps
the path of its BFS parent plus one step, so paths are shortest. Replay covers every path by
replaying only the BFS tree's leaves: every state's path is a prefix of some leaf's path and
lockstep compares after every step.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from kvspec.config import Config
from kvspec.errors import InvalidArgument
from kvspec.policy import Policy
from kvspec.spec.model import Model
from kvspec.spec.state import State
from kvspec.spec.trace import Step

from .adapter import Factory, resolve_factory
from .detect import FLAG_IDS
from .lockstep import run_steps
from .report import Divergence

_CLEAR = {f: False for f in FLAG_IDS}
SMALL_SCOPE = dict(num_gpu_pages=4, num_requests=2, tokens_per_block=2, max_prompt_len=3,
                   max_draft_len=1)
"""The largest sizes :func:`explore` accepts (G, N, B, prompt, draft)."""


@dataclass
class ExhaustiveResult:
    """What :func:`explore` covered: canonical states, behaviours (one shortest path per
    state), model transitions, replayed leaf paths and steps, time, and whether it was bounded
    (``bounded_reason`` says by what)."""

    policy: str
    config: Config
    states: int = 0
    behaviours: int = 0
    transitions: int = 0
    max_depth: int = 0
    replayed_paths: int = 0
    replayed_steps: int = 0
    seconds: float = 0.0
    bfs_seconds: float = 0.0
    bounded: bool = False
    bounded_reason: str = ""
    divergences: list[Divergence] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.divergences

    def render(self) -> str:
        b = f" (BOUNDED: {self.bounded_reason})" if self.bounded else " (complete)"
        head = (f"exhaustive {self.policy}: {self.states} states, {self.behaviours} behaviours,"
                f" {self.transitions} transitions, depth {self.max_depth}{b};"
                f" replayed {self.replayed_paths} leaf paths / {self.replayed_steps} steps in"
                f" {self.seconds:.2f} s (BFS {self.bfs_seconds:.2f} s):"
                f" {'OK' if self.ok else f'{len(self.divergences)} DIVERGENCES'}")
        if self.divergences:
            head += "\n" + self.divergences[0].render()
        return head


def canonical(s: State) -> State:
    """Symmetry-reduced key: request records sorted, ghost violation flags cleared."""
    return s._replace(reqs=tuple(sorted(s.reqs)), **_CLEAR)


def _check_scope(config: Config) -> None:
    for name, hi in SMALL_SCOPE.items():
        if getattr(config, name) > hi:
            raise InvalidArgument(
                f"explore: Config.{name}={getattr(config, name)} exceeds the small scope"
                f" ({name} <= {hi}); use run_check (random walks) for larger configs")


def explore(factory: str | Factory, policy: Policy, config: Config, *, max_depth: int = 1000,
            max_states: int = 200_000, replay: bool = True, impl_name: str = "",
            stop_at_first: bool = True) -> ExhaustiveResult:
    """BFS the model's reachable states under ``policy``/``config`` and replay every
    behaviour on ``factory``'s manager.

    Cost: O(states x enabled steps) model steps for the BFS plus one lockstep step per
    replayed step. ``max_depth``/``max_states`` bound the search; a bounded result says so.

    Raises:
        InvalidArgument: config outside the small scope (:data:`SMALL_SCOPE`) or bad factory.
    """
    _check_scope(config)
    fac = resolve_factory(factory)
    t0 = time.perf_counter()
    res = ExhaustiveResult(policy.name, config)
    m = Model(config, policy)
    init = m.initial()
    parent: dict[State, tuple[State | None, Step | None]] = {canonical(init): (None, None)}
    has_child: set[State] = set()
    depth_of = {canonical(init): 0}
    queue: deque[tuple[State, State]] = deque([(init, canonical(init))])
    while queue:
        s, key = queue.popleft()
        d = depth_of[key]
        if d >= max_depth:
            res.bounded, res.bounded_reason = True, f"depth {max_depth} reached"
            continue
        for name, r, args in m.enabled_steps(s):
            res.transitions += 1
            nxt = m.step(s, name, r, **args).state._replace(**_CLEAR)
            k2 = canonical(nxt)
            if k2 in parent:
                continue
            if len(parent) >= max_states:
                res.bounded, res.bounded_reason = True, f"{max_states} states reached"
                break
            parent[k2] = (key, Step(name, r, dict(args)))
            depth_of[k2] = d + 1
            has_child.add(key)
            queue.append((nxt, k2))
    res.states = res.behaviours = len(parent)
    res.max_depth = max(depth_of.values())
    res.bfs_seconds = time.perf_counter() - t0
    if replay:
        for leaf in parent:
            if leaf in has_child:
                continue
            path = _path(parent, leaf)
            res.replayed_paths += 1
            res.replayed_steps += len(path)
            div = run_steps(fac, config, policy, path, impl_name=impl_name,
                            check_structure=True, probe_misuse=True)
            if div is not None:
                res.divergences.append(div)
                if stop_at_first:
                    break
    res.seconds = time.perf_counter() - t0
    return res


def _path(parent: dict[State, tuple[State | None, Step | None]], key: State) -> list[Step]:
    steps: list[Step] = []
    cur: State | None = key
    while cur is not None:
        prev, step = parent[cur]
        if step is not None:
            steps.append(step)
        cur = prev
    steps.reverse()
    return steps
