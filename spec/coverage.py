"""Coverage of the protocol: which actions and which of their branches a run reached, and
which "sometimes" witnesses it hit.

A branch is a named outcome of one action, read from the model's transition (state before,
state after, slot, result): a resize that grew or failed, a revert that took the FREE or the
SHRINK branch, a growth that demoted other caches to the host, a resume that recalled pages
from it. Branches are declared once here (:data:`BRANCHES`) and read by every checker that
steps the model (the walker, the lockstep of ``kvspec check`` and ``kvspec explore``). A branch
that applies to a policy and configs but is never reached makes an "OK" weaker: reports warn
about it.

Concrete states only (plain ints and bools); nothing here runs under z3.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from kvspec.config import Config
from kvspec.policy import Policy

from .invariants import PROPERTIES, Property
from .registry import Ctx
from .state import ACTIVE, SUSPENDED, Req, State

Pred = Callable[[Req, Req, State, State, int, "bool | None"], bool]


def _any_revert(p: Policy) -> bool:
    return p.revert_deferred_context or p.revert_context_on_skip or p.rollback_failed_resize


def _always(p: Policy, cs: Sequence[Config]) -> bool:
    return True


def _host(p: Policy, cs: Sequence[Config]) -> bool:
    return p.host_tier and any(c.num_host_pages > 0 for c in cs)


def _evicts_others(a: Req, b: Req, s: State, t: State, r: int, res: bool | None) -> bool:
    return any(y.host_pages > x.host_pages for i, (x, y) in enumerate(zip(s.reqs, t.reqs))
               if i != r) or t.rest_host > s.rest_host


def _recalls(a: Req, b: Req, s: State, t: State, r: int, res: bool | None) -> bool:
    return a.has_cache and b.has_cache and b.host_pages < a.host_pages


@dataclass(frozen=True)
class Branch:
    """One named outcome of ``action``: ``holds(before_req, after_req, before, after, r,
    result)`` says whether a transition took it; ``applies(policy, configs)`` whether a run
    under them can reach it (a branch that cannot is never warned about)."""

    action: str
    name: str
    holds: Pred
    applies: Callable[[Policy, Sequence[Config]], bool] = _always

    @property
    def key(self) -> str:
        """``action/name``."""
        return f"{self.action}/{self.name}"


def _b(action: str, name: str, holds: Pred,
       applies: Callable[[Policy, Sequence[Config]], bool] = _always) -> Branch:
    return Branch(action, name, holds, applies)


BRANCHES: tuple[Branch, ...] = (
    _b("prepare_context", "creates the cache",
       lambda a, b, s, t, r, res: not a.has_cache and b.has_cache),
    _b("prepare_context", "resumes a suspended cache",
       lambda a, b, s, t, r, res: a.has_cache and a.status == SUSPENDED
       and b.status == ACTIVE),
    _b("prepare_context", "refused", lambda a, b, s, t, r, res: res is False),
    _b("prepare_context", "recalls host pages", _recalls, _host),
    _b("prepare_context", "demotes other caches", _evicts_others, _host),
    _b("resize_context", "grows", lambda a, b, s, t, r, res: b.capacity > a.capacity),
    _b("resize_context", "needs no growth",
       lambda a, b, s, t, r, res: bool(res) and b.capacity == a.capacity),
    _b("resize_context", "fails", lambda a, b, s, t, r, res: res is False),
    _b("resize_context", "demotes other caches", _evicts_others, _host),
    _b("try_allocate_generation", "grows",
       lambda a, b, s, t, r, res: b.capacity > a.capacity),
    _b("try_allocate_generation", "fails", lambda a, b, s, t, r, res: res is False),
    _b("try_allocate_generation", "resumes a suspended cache",
       lambda a, b, s, t, r, res: a.status == SUSPENDED and b.status == ACTIVE),
    _b("try_allocate_generation", "demotes other caches", _evicts_others, _host),
    _b("suspend_request", "suspends", lambda a, b, s, t, r, res: b.status == SUSPENDED),
    _b("resume_request", "resumes", lambda a, b, s, t, r, res: bool(res)),
    _b("resume_request", "refused", lambda a, b, s, t, r, res: res is False),
    _b("resume_request", "recalls host pages", _recalls, _host),
    _b("resume_request", "demotes other caches", _evicts_others, _host),
    _b("evict_to_host", "demotes", lambda a, b, s, t, r, res: b.host_pages > a.host_pages,
       _host),
    _b("decide", "waits (batch waiting)", lambda a, b, s, t, r, res: bool(t.waited),
       lambda p, cs: any(c.batch_wait_timeout_iters > 0 for c in cs)),
    _b("decide", "skips the batch (can_queue false)",
       lambda a, b, s, t, r, res: not t.can_queue),
    _b("decide", "queues the batch",
       lambda a, b, s, t, r, res: bool(t.can_queue) and not t.waited),
    _b("revert_allocate_context", "FREE branch",
       lambda a, b, s, t, r, res: a.has_cache and not b.has_cache,
       lambda p, cs: _any_revert(p)),
    _b("revert_allocate_context", "SHRINK branch, suspends",
       lambda a, b, s, t, r, res: b.has_cache and b.capacity < a.capacity
       and b.status == SUSPENDED, lambda p, cs: _any_revert(p)),
    _b("revert_allocate_context", "SHRINK branch to 0",
       lambda a, b, s, t, r, res: b.has_cache and b.capacity < a.capacity
       and b.status == ACTIVE, lambda p, cs: _any_revert(p)),
    _b("revert_allocate_context", "leaves the cache",
       lambda a, b, s, t, r, res: a.has_cache == b.has_cache and a.capacity == b.capacity,
       lambda p, cs: _any_revert(p)),
    _b("revert_allocate_generation", "trims the growth",
       lambda a, b, s, t, r, res: b.capacity < a.capacity,
       lambda p, cs: p.revert_generation_on_skip),
    _b("forward", "a context chunk", lambda a, b, s, t, r, res: b.pos > a.pos),
    _b("forward", "a generation step", lambda a, b, s, t, r, res: b.pos == a.pos),
    _b("forward", "accepts drafts",
       lambda a, b, s, t, r, res: b.history - a.history > 1 and b.pos == a.pos,
       lambda p, cs: any(c.max_draft_len > 0 for c in cs)),
    _b("free_resources", "frees", lambda a, b, s, t, r, res: a.has_cache and not b.has_cache),
)
"""Every declared branch; an action with none declared counts as one branch, ``called``."""

_BY_ACTION: dict[str, tuple[Branch, ...]] = {}
for _br in BRANCHES:
    _BY_ACTION[_br.action] = _BY_ACTION.get(_br.action, ()) + (_br,)


def branches_taken(name: str, r: int, before: State, after: State,
                   result: bool | None) -> list[str]:
    """The keys (``action/branch``) of the branches a transition of ``name`` on slot ``r``
    took; ``[name + "/called"]`` for an action with no declared branch. O(branches)."""
    declared = _BY_ACTION.get(name)
    if declared is None:
        return [f"{name}/called"]
    if r < len(before.reqs):
        a, b = before.reqs[r], after.reqs[r]
    else:  # an action without a slot (decide, end_iteration)
        a = b = Req()
    return [br.key for br in declared if br.holds(a, b, before, after, r, result)]


@dataclass
class Coverage:
    """What runs reached: steps, branch counts, witnesses hit, policies and configs.

    Add each model transition with :meth:`add`; combine runs with :meth:`merge`. Cost per
    step: the action's branch predicates plus the witnesses not hit yet (a witness is
    evaluated until its first hit, so ``witnesses`` records 1 per witness hit).
    """

    steps: int = 0
    branches: Counter[str] = field(default_factory=Counter)
    witnesses: Counter[str] = field(default_factory=Counter)
    policies: list[Policy] = field(default_factory=list)
    configs: list[Config] = field(default_factory=list)
    actions: set[str] = field(default_factory=set)
    # per policy, the properties that apply and whose witness is not hit yet
    _todo: dict[Policy, list[Property]] = field(default_factory=dict, init=False, repr=False,
                                                compare=False)

    def add(self, ctx: Ctx, name: str, r: int, before: State, after: State,
            result: bool | None) -> None:
        """Count one transition (``after`` as the action returned it, ghost flags set)."""
        self.steps += 1
        self.actions.add(name)
        self.branches.update(branches_taken(name, r, before, after, result))
        todo = self._todo.get(ctx.policy)
        if todo is None:
            todo = self._todo[ctx.policy] = [p for p in PROPERTIES if p.applies(ctx.policy)]
        if not todo:
            return
        hit = [p for p in todo if not self.witnesses[p.id] and p.witness(ctx, before, after)]
        for p in hit:
            self.witnesses[p.id] = 1
        todo[:] = [p for p in todo if not self.witnesses[p.id]]

    def ran(self, policy: Policy, configs: Iterable[Config]) -> None:
        """Record a policy and the configs run under it."""
        if policy not in self.policies:
            self.policies.append(policy)
        for c in configs:
            if c not in self.configs:
                self.configs.append(c)

    @classmethod
    def merged(cls, parts: Iterable[Coverage]) -> Coverage:
        """A new coverage holding all of ``parts``."""
        out = cls()
        for p in parts:
            out.merge(p)
        return out

    def merge(self, other: Coverage) -> None:
        """Add ``other``'s counts and runs into this one."""
        self.steps += other.steps
        self.branches.update(other.branches)
        self.witnesses.update(other.witnesses)
        self.actions |= other.actions
        for p in other.policies:
            if p not in self.policies:
                self.policies.append(p)
        for c in other.configs:
            if c not in self.configs:
                self.configs.append(c)

    def expected(self) -> list[str]:
        """Branch keys some recorded policy can reach under the recorded configs."""
        return [br.key for br in BRANCHES
                if any(br.applies(p, self.configs) for p in self.policies)]

    def missing(self) -> list[str]:
        """Expected branch keys never reached."""
        return [k for k in self.expected() if not self.branches[k]]

    def _props(self) -> list[str]:
        return [p.id for p in PROPERTIES if any(p.applies(pol) for pol in self.policies)]

    def missing_witnesses(self) -> list[str]:
        """Ids of properties that apply to some recorded policy whose witness was never
        hit."""
        return [i for i in self._props() if not self.witnesses[i]]

    def lines(self) -> list[str]:
        """The report lines: a summary, then a warning line per gap."""
        expected = self.expected()
        reached = [k for k in expected if self.branches[k]]
        props = self._props()
        hit = [i for i in props if self.witnesses[i]]
        out = [f"coverage: {self.steps} steps, {len(self.actions)} actions,"
               f" {len(reached)}/{len(expected)} branches, {len(hit)}/{len(props)} witnesses,"
               f" {len(self.policies)} policies, {len(self.configs)} configs"]
        missing = self.missing()
        if missing:
            out.append("  warning: branches never reached (an OK says nothing about them): "
                       + ", ".join(missing))
        gaps = self.missing_witnesses()
        if gaps:
            out.append("  warning: witnesses never hit: " + ", ".join(gaps))
        return out

    def to_json(self) -> dict[str, object]:
        """Counts per branch and witness, and the gaps."""
        return {"steps": self.steps, "actions": sorted(self.actions),
                "branches": dict(sorted(self.branches.items())),
                "witnesses": dict(sorted(self.witnesses.items())),
                "policies": [p.name for p in self.policies], "configs": len(self.configs),
                "missing_branches": self.missing(),
                "missing_witnesses": self.missing_witnesses()}
