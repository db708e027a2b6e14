"""Small-scope exhaustive conformance: every reachable model state of a small config, one
shortest behaviour per state, every behaviour replayed on an implementation (a generated
conformance suite in the style of MongoDB's model-based trace checking).

BFS uses ``Model.enabled_steps`` (every argument tuple). Symmetry reduction: request slots are
interchangeable (every action treats them alike), so a state's key sorts its request records.
Sticky ghost violation flags are dropped from the key (no guard reads them). Each state keeps
the path of its BFS parent plus one step, so paths are shortest. Replay covers every path by
replaying only the BFS tree's leaves: every state's path is a prefix of some leaf's path and
lockstep compares after every step. A transition into a state already seen (a free that
returns to the empty state, a suspend/resume cycle) is on no tree path: each such *closing
edge* is replayed as its source's path plus the edge, so every transition of the reachable
graph is replayed at least once.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kvspec.config import SMALL_SCOPE, Config
from kvspec.errors import InvalidArgument
from kvspec.policy import Policy
from kvspec.spec.invariants import get_property
from kvspec.spec.model import Model
from kvspec.spec.state import State
from kvspec.spec.trace import Step

from .adapter import Factory, resolve_factory
from .check import InterruptLatch
from .detect import FLAG_IDS
from .lockstep import run_steps
from .misuse import MisuseFinding, merge, render_warnings
from .report import Divergence, impl_label, render_config

_CLEAR = {f: False for f in FLAG_IDS}
_CLI_OPTION = {"num_gpu_pages": "--gpu-pages", "num_requests": "--requests"}
PROGRESS_EVERY = 1024
"""BFS states dequeued (and leaf paths replayed, :data:`REPLAY_PROGRESS_EVERY`) between two
progress calls."""
REPLAY_PROGRESS_EVERY = 64


@dataclass
class ExhaustiveResult:
    """What :func:`explore` covered: canonical states, behaviours (one shortest path per
    state), model transitions, replayed leaf paths and steps, time, and whether it was bounded
    (``bounded_reason`` says by what). ``interrupted``: a ``KeyboardInterrupt`` stopped it in
    ``interrupted_in`` (``"bfs"``: the counts are the states found so far and nothing was
    replayed; ``"replay"``: ``replayed_paths`` of ``leaf_paths`` were replayed).
    ``leaf_paths``: the paths to replay, the BFS tree's leaves plus ``closing_edges`` (each
    transition into an already-seen state, replayed as its source's path plus itself).
    ``warnings``: the first tolerated misuse of each kind (:mod:`~kvspec.conformance.misuse`)
    over the replayed paths; ``strict``: the replay ran with ``strict=True``.
    ``divergence_depth``: the smallest BFS depth at which a replayed path diverged (its
    ``Divergence.index``; every replayed path is a BFS-tree path, or one plus a closing edge,
    so its first k steps are a shortest path to the model state, or the transition, they
    reach); None without a divergence."""

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
    impl: str = ""
    leaf_paths: int = 0
    closing_edges: int = 0
    interrupted: bool = False
    interrupted_in: str = ""
    warnings: list[MisuseFinding] = field(default_factory=list)
    strict: bool = False
    divergence_depth: int | None = None

    @property
    def ok(self) -> bool:
        """No replayed behaviour diverged (see ``interrupted`` for an incomplete run)."""
        return not self.divergences

    def render(self) -> str:
        """Head (impl, policy, verdict), the config, the coverage line, where an interrupt
        stopped it, the first divergence report, then the misuse warnings."""
        verdict = "OK" if self.ok else f"{len(self.divergences)} DIVERGENCES"
        if self.interrupted:
            verdict = "INTERRUPTED" if self.ok else verdict + " (interrupted)"
        b = f" (BOUNDED: {self.bounded_reason})" if self.bounded else " (complete)"
        if self.interrupted:
            b = " (incomplete: interrupted)"
        lines = [
            f"kvspec explore: impl {self.impl or '?'}, policy {self.policy}, seed: none"
            f" (exhaustive BFS, deterministic){', strict' if self.strict else ''}: {verdict}",
            f"  config: {render_config(self.config)}",
            f"exhaustive {self.policy}: {self.states} states, {self.behaviours} behaviours,"
            f" {self.transitions} transitions, depth {self.max_depth}{b};"
            f" replayed {self.replayed_paths} of {self.leaf_paths} paths"
            f" ({self.leaf_paths - self.closing_edges} leaves + {self.closing_edges} closing"
            f" edges) / {self.replayed_steps} steps in"
            f" {self.seconds:.2f} s (BFS {self.bfs_seconds:.2f} s)"]
        if self.interrupted_in == "bfs":
            lines.append(f"interrupted after {self.states} states of the BFS (depth"
                         f" {self.max_depth}); nothing was replayed")
        elif self.interrupted_in == "replay":
            lines.append(f"interrupted after replaying {self.replayed_paths} of"
                         f" {self.leaf_paths} paths ({self.replayed_steps} steps)")
        if self.divergence_depth is not None:
            lines.append(f"divergence at BFS depth {self.divergence_depth}: a shortest path to"
                         " the state where it diverges")
        if self.divergences:
            lines.append(self.divergences[0].render())
        lines.extend(render_warnings(self.warnings))
        return "\n".join(lines)


def canonical(s: State) -> State:
    """Symmetry-reduced key: request records sorted, ghost violation flags cleared."""
    return s._replace(reqs=tuple(sorted(s.reqs)), **_CLEAR)


def _check_scope(config: Config) -> None:
    for name, hi in SMALL_SCOPE.items():
        if getattr(config, name) > hi:
            opt = _CLI_OPTION.get(name)
            raise InvalidArgument(
                f"kvspec explore: Config.{name}={getattr(config, name)} exceeds the small"
                f" scope ({name} <= {hi}"
                + (f", i.e. {opt} {hi} at most" if opt else "")
                + "); for larger configs use `kvspec check` (seeded random walks and"
                " hypothesis)")


def explore(factory: str | Factory, policy: Policy, config: Config, *, max_depth: int = 1000,
            max_states: int = 200_000, replay: bool = True, impl_name: str = "",
            stop_at_first: bool = True, progress: Callable[[int, int], None] | None = None,
            replay_progress: Callable[[int, int], None] | None = None,
            strict: bool = False) -> ExhaustiveResult:
    """BFS the model's reachable states under ``policy``/``config`` and replay every
    behaviour on ``factory``'s manager.

    Cost: O(states x enabled steps) model steps for the BFS plus one lockstep step per
    replayed step. ``max_depth``/``max_states`` bound the search; a bounded result says so.

    ``progress(states_found, current_depth)`` is called every :data:`PROGRESS_EVERY` BFS
    states and once when the BFS ends; ``replay_progress(paths_replayed, paths_total)`` every
    :data:`REPLAY_PROGRESS_EVERY` leaf paths and once at the end of the replay. A
    ``KeyboardInterrupt`` inside either loop returns the result so far with
    ``interrupted=True`` (and ``interrupted_in``); a divergence found before it is kept.
    ``strict``: a tolerated misuse is a divergence (see
    :class:`~kvspec.conformance.lockstep.Lockstep`); without it the first of each kind is in
    ``warnings``.

    Raises:
        InvalidArgument: config outside the small scope (:data:`SMALL_SCOPE`), a bad
            ``max_depth``/``max_states``, or a bad factory. A manager that raises during
            replay is a divergence in the result, not an error.
    """
    _check_scope(config)
    for name, value in (("max_depth", max_depth), ("max_states", max_states)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgument(f"kvspec explore: {name}={value!r} must be an integer >= 1")
    fac = resolve_factory(factory)
    res = ExhaustiveResult(policy.name, config, impl=impl_name or impl_label(factory),
                           strict=bool(strict))
    latch = InterruptLatch()
    with latch.installed():
        _explore(fac, policy, config, res, latch, max_depth=max_depth, max_states=max_states,
                 replay=replay, stop_at_first=stop_at_first, progress=progress,
                 replay_progress=replay_progress)
    return res


def _explore(fac: Factory, policy: Policy, config: Config, res: ExhaustiveResult,
             latch: InterruptLatch, *, max_depth: int, max_states: int, replay: bool,
             stop_at_first: bool, progress: Callable[[int, int], None] | None,
             replay_progress: Callable[[int, int], None] | None) -> None:
    """:func:`explore`'s BFS and replay, filling ``res``."""
    t0 = time.perf_counter()
    m = Model(config, policy)
    init = m.initial()
    parent: dict[State, tuple[State | None, Step | None]] = {canonical(init): (None, None)}
    has_child: set[State] = set()
    depth_of = {canonical(init): 0}
    queue: deque[tuple[State, State]] = deque([(init, canonical(init))])
    closing: list[tuple[State, Step]] = []
    popped = 0
    d = 0
    try:
        while queue:
            s, key = queue.popleft()
            d = depth_of[key]
            popped += 1
            if popped % PROGRESS_EVERY == 0:
                latch.check()
                if progress is not None:
                    progress(len(parent), d)
            if d >= max_depth:
                res.bounded, res.bounded_reason = True, f"depth {max_depth} reached"
                continue
            for name, r, args in m.enabled_steps(s):
                res.transitions += 1
                nxt = m.step(s, name, r, **args).state._replace(**_CLEAR)
                k2 = canonical(nxt)
                if k2 in parent:
                    closing.append((key, Step(name, r, dict(args))))
                    continue
                if len(parent) >= max_states:
                    res.bounded, res.bounded_reason = True, f"{max_states} states reached"
                    break
                parent[k2] = (key, Step(name, r, dict(args)))
                depth_of[k2] = d + 1
                has_child.add(key)
                queue.append((nxt, k2))
        latch.check()
        if progress is not None:
            progress(len(parent), d)
    except KeyboardInterrupt:
        res.interrupted, res.interrupted_in = True, "bfs"
    res.states = res.behaviours = len(parent)
    res.max_depth = max(depth_of.values())
    res.bfs_seconds = time.perf_counter() - t0
    res.closing_edges = len(closing)
    res.leaf_paths = len(parent) - len(has_child) + len(closing)
    if replay and not res.interrupted:
        paths = itertools.chain(
            (_path(parent, leaf) for leaf in parent if leaf not in has_child),
            (_path(parent, src) + [step] for src, step in closing))
        try:
            for path in paths:
                latch.check()
                found: list[MisuseFinding] = []
                div = run_steps(fac, config, policy, path, impl_name=res.impl,
                                check_structure=True, probe_misuse=True, strict=res.strict,
                                warnings=found)
                if found:
                    merge(res.warnings, found, f"replayed path {res.replayed_paths + 1} of"
                          f" {res.leaf_paths}")
                res.replayed_paths += 1
                res.replayed_steps += len(path)
                if replay_progress is not None and \
                        res.replayed_paths % REPLAY_PROGRESS_EVERY == 0:
                    replay_progress(res.replayed_paths, res.leaf_paths)
                if div is not None:
                    res.divergences.append(div)
                    if res.divergence_depth is None or div.index < res.divergence_depth:
                        res.divergence_depth = div.index
                    if stop_at_first:
                        break
            latch.check()
            if replay_progress is not None:
                replay_progress(res.replayed_paths, res.leaf_paths)
        except KeyboardInterrupt:
            res.interrupted, res.interrupted_in = True, "replay"
    res.seconds = time.perf_counter() - t0


def shortest_violation(policy: Policy, config: Config, property_id: str, *,
                       max_states: int = 200_000) -> tuple[list[Step] | None, int]:
    """A shortest model behaviour that violates ``property_id`` under ``policy``/``config``,
    by BFS over the symmetry-reduced states (the model's own violation, no implementation),
    and the number of states visited; (None, states) when no reachable state within
    ``max_states`` violates it.

    Cost: O(states x enabled steps) model steps plus one property check per transition.

    Raises:
        InvalidArgument: config outside the small scope, a bad ``max_states`` or an unknown
            property id.
    """
    _check_scope(config)
    if isinstance(max_states, bool) or not isinstance(max_states, int) or max_states < 1:
        raise InvalidArgument(f"shortest_violation: max_states={max_states!r} must be an"
                              " integer >= 1")
    prop = get_property(property_id)
    m = Model(config, policy)
    init = m.initial()
    parent: dict[State, tuple[State | None, Step | None]] = {canonical(init): (None, None)}
    queue: deque[tuple[State, State]] = deque([(init, canonical(init))])
    while queue:
        s, key = queue.popleft()
        for name, r, args in m.enabled_steps(s):
            nxt = m.step(s, name, r, **args).state
            if not prop.check(m.ctx, nxt):
                return _path(parent, key) + [Step(name, r, dict(args))], len(parent)
            nxt = nxt._replace(**_CLEAR)
            k2 = canonical(nxt)
            if k2 in parent or len(parent) >= max_states:
                continue
            parent[k2] = (key, Step(name, r, dict(args)))
            queue.append((nxt, k2))
    return None, len(parent)


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
