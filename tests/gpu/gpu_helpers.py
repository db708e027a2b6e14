"""A lockstep driver for the gpu tests: the same random protocol run on several managers (torch
batched, torch per request, CPU reference), comparing results, observations and KV contents
after every step."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from kvspec.config import Config
from kvspec.errors import InvariantViolation, KVSpecError
from kvspec.gpu_impl import GpuRequest, Manager, token_value
from kvspec.policy import Policy

DONE, CONTEXT, GENERATION = 0, 1, 2

NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
#: parametrize a test over these: the CPU everywhere, CUDA (marked ``gpu``) where present
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, NO_CUDA])]


@dataclass
class Impl:
    """One manager under test and its own request objects."""

    name: str
    mgr: Any
    make_request: Callable[..., Any]
    gen_state: Any = GENERATION
    batch: bool = False
    reqs: dict[int, Any] = field(default_factory=dict)

    @property
    def has_kv(self) -> bool:
        return hasattr(self.mgr, "forward_write")


def gpu_impl(cfg: Config, policy: Policy, batch: bool, device: str = "cpu") -> Impl:
    """A torch manager driven through its batched (or per-request) calls."""
    return Impl(f"gpu-{'batch' if batch else 'seq'}-{device}",
                Manager(cfg, policy, device=device, kv_width=3), GpuRequest, batch=batch)


def expected_kv(rid: int, history: int, width: int) -> torch.Tensor:
    """What read_kv must return: token_value for positions 0..history-1."""
    pos = torch.arange(history, dtype=torch.int64)
    return token_value(torch.full_like(pos, rid), pos, torch.arange(width, dtype=torch.int64))


def _free(v: Any) -> int:
    return int(v() if callable(v) else v)


def observe(impl: Impl, cfg: Config, policy: Policy) -> dict[str, Any]:
    """Every protocol observation of one manager, page tables as lists."""
    m = impl.mgr
    per = {}
    for rid in range(cfg.num_requests):
        if not m.has_cache(rid):
            per[rid] = (False, m.get_draft_record(rid))
            continue
        per[rid] = (True, m.get_capacity(rid), m.get_history(rid), m.get_committed(rid),
                    int(m.get_status(rid)), int(m.get_host_pages(rid)),
                    bool(m.is_never_resumed(rid)), m.get_draft_record(rid),
                    tuple(m.get_page_tiers(rid)), list(m.get_page_table(rid)))
    reqs = {rid: (r.context_current_position, r.py_ctx_pre_resize_cap)
            for rid, r in impl.reqs.items()}
    out = {"per": per, "reqs": reqs, "gpu_free": _free(m.num_free_gpu_pages)}
    if policy.host_tier:  # NOTE: without a host tier the reference still counts H free pages
        out["host_free"] = _free(m.num_free_host_pages)
    return out


def _unconsumed(obs: dict[str, Any]) -> dict[str, Any]:
    """Observations without draft records and snapshots (what a revert may consume before
    it raises under ``revert_clears_before_resize``)."""
    per = {rid: (o[:7] + o[8:] if o[0] else o[:1]) for rid, o in obs["per"].items()}
    reqs = {rid: r[0] for rid, r in obs["reqs"].items()}
    return {**obs, "per": per, "reqs": reqs}


def same_up_to_renaming(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Observations equal (per-page tiers included), page ids compared up to a bijection per
    tier."""
    maps: dict[tuple[int, str], dict[int, int]] = {}
    for rid, ra in a["per"].items():
        rb = b["per"][rid]
        if ra[:-1] != rb[:-1] if ra[0] else ra != rb:
            return False
        if not ra[0]:
            continue
        if len(ra[-1]) != len(rb[-1]) or len(ra[-2]) != len(ra[-1]):
            return False
        for tier, pa, pb in zip(ra[-2], ra[-1], rb[-1], strict=True):
            fwd = maps.setdefault((tier, "f"), {})
            bwd = maps.setdefault((tier, "b"), {})
            if fwd.setdefault(pa, pb) != pb or bwd.setdefault(pb, pa) != pa:
                return False
    return all(a[k] == b[k] for k in a if k != "per")


class Lockstep:
    """Runs random protocol steps on every impl; asserts they agree after each step."""

    def __init__(self, cfg: Config, policy: Policy, impls: list[Impl],
                 exact: bool = False) -> None:
        self.cfg = cfg
        self.policy = policy
        self.impls = impls
        self.exact = exact  # also compare snapshot_state (same implementation, same page ids)
        self.phase = {rid: DONE for rid in range(cfg.num_requests)}
        self.log: list[str] = []

    # ---- plumbing ---------------------------------------------------------------------------

    def call(self, what: str, fn: Callable[[Impl], Any]) -> Any:
        """Calls ``fn`` on every impl; results (or exception types) must agree."""
        self.log.append(what)
        results = []
        consumes = self.policy.revert_clears_before_resize and what.startswith("revert_")
        for impl in self.impls:
            before = impl.mgr.snapshot_state()
            seen = _unconsumed(observe(impl, self.cfg, self.policy)) if consumes else None
            try:
                results.append(("ok", fn(impl)))
            except InvariantViolation as exc:
                results.append(("raise", type(exc).__name__))
                if consumes:  # the revert consumed its snapshot / record before the check
                    assert _unconsumed(observe(impl, self.cfg, self.policy)) == seen, \
                        f"{impl.name}: raise mutated more than the consumed record"
                else:
                    assert impl.mgr.snapshot_state() == before, \
                        f"{impl.name}: raise mutated state"
            except KVSpecError as exc:
                results.append(("raise", type(exc).__name__))
                assert impl.mgr.snapshot_state() == before, f"{impl.name}: raise mutated state"
        assert all(r == results[0] for r in results), self._fail(f"results differ: {results}")
        return results[0]

    def _fail(self, msg: str) -> str:
        return msg + "\ntrace: " + " / ".join(self.log[-30:])

    def check(self) -> None:
        """Integrity of each impl, agreement of observations, KV read-back."""
        obs = []
        for impl in self.impls:
            impl.mgr.check_integrity()
            obs.append(observe(impl, self.cfg, self.policy))
        for impl, o in zip(self.impls[1:], obs[1:], strict=True):
            assert same_up_to_renaming(obs[0], o), self._fail(
                f"{self.impls[0].name} vs {impl.name}:\n{obs[0]}\n{o}")
        if self.exact:
            snaps = [impl.mgr.snapshot_state() for impl in self.impls]
            assert all(s == snaps[0] for s in snaps), self._fail("snapshot_state differs")
        for impl in self.impls:
            if not impl.has_kv:
                continue
            for rid in range(self.cfg.num_requests):
                if impl.mgr.has_cache(rid):
                    got = impl.mgr.read_kv(rid).cpu()
                    want = expected_kv(rid, impl.mgr.get_history(rid), impl.mgr.kv.width)
                    assert torch.equal(got, want), self._fail(f"{impl.name}: KV of {rid} lost")

    def batched(self, impl: Impl, single: str, batch: str, rids: list[int],
                *extra: list[int]) -> Any:
        """The batch op on a batch impl, the single ops in order otherwise."""
        reqs = [impl.reqs[r] for r in rids]
        if impl.batch:
            outs = getattr(impl.mgr, batch)(reqs, *extra)
        else:
            outs = [getattr(impl.mgr, single)(q, *(e[i] for e in extra))
                    for i, q in enumerate(reqs)]
        # ops without a result (and the context revert without free_branch_rewinds): None
        return None if outs is None or all(o is None for o in outs) else outs

    # ---- protocol steps ---------------------------------------------------------------------

    def rids(self, phase: int) -> list[int]:
        return [r for r, p in self.phase.items() if p == phase]

    def cached(self, rid: int) -> bool:
        return bool(self.impls[0].mgr.has_cache(rid))

    def status(self, rid: int) -> int:
        return int(self.impls[0].mgr.get_status(rid))

    def arrive(self, rng: random.Random) -> None:
        free = self.rids(DONE)
        if not free:
            return
        rid = rng.choice(free)
        p = rng.randint(1, self.cfg.max_prompt_len)
        ch = rng.randint(1, 3)
        d = rng.randint(0, self.cfg.max_draft_len)
        self.log.append(f"arrive({rid}, P={p}, ch={ch}, d={d})")
        for impl in self.impls:
            impl.reqs[rid] = impl.make_request(request_id=rid, prompt_len=p,
                                               context_chunk_size=ch, draft_len=d)
        self.phase[rid] = CONTEXT

    def context_step(self, rng: random.Random) -> None:
        """prepare + resize (batched) a subset of context requests, revert some, forward the
        rest."""
        ctx = [r for r in self.rids(CONTEXT) if rng.random() < 0.7]
        ready = []
        for rid in ctx:
            if self.cached(rid) or self.impls[0].reqs[rid].context_current_position == 0:
                ok = self.call(f"prepare_context({rid})",
                               lambda i, r=rid: i.mgr.prepare_context(i.reqs[r]))
                if ok == ("ok", True):
                    ready.append(rid)
        if not ready:
            return
        tokens = [self._ctx_tokens(self.impls[0].reqs[r]) for r in ready]
        res = self.call(f"resize_context{ready}{tokens}", lambda i: self.batched(
            i, "resize_context", "resize_context_batch", ready, tokens))
        grown = [r for r, ok in zip(ready, res[1], strict=True) if ok]
        reverted = [r for r in ready if rng.random() < 0.3]
        # NOTE: a batch that raises (SWA-REWIND) changes nothing while single calls in order
        # keep the earlier requests' reverts, so under scratch reuse revert one per call.
        groups = [[r] for r in reverted] if self.policy.swa_scratch_reuse else [reverted]
        for group in filter(None, groups):
            self.call(f"revert_allocate_context{group}", lambda i, g=group: self.batched(
                i, "revert_allocate_context", "revert_allocate_context_batch", g))
        fwd = [r for r in grown if r not in reverted and self.cached(r)
               and self.status(r) == 0]
        if fwd:
            self._forward_context(fwd)

    def _ctx_tokens(self, q: Any) -> int:
        n = min(q.context_chunk_size, q.prompt_len - q.context_current_position)
        return n + (q.draft_len if q.context_current_position + n == q.prompt_len else 0)

    def _forward_context(self, fwd: list[int]) -> None:
        if self.policy.reserve_context:  # phase 2 of the reservation (docs/design-space.md)
            self.call(f"commit_context{fwd}", lambda i: [
                i.mgr.commit_context(i.reqs[r]) for r in fwd])
        for impl in self.impls:
            ns = []
            for r in fwd:
                q = impl.reqs[r]
                ns.append(min(q.context_chunk_size, q.prompt_len - q.context_current_position))
            if impl.has_kv:
                impl.mgr.forward_write([impl.reqs[r] for r in fwd],
                                       [impl.reqs[r].context_current_position for r in fwd], ns)
            for r, n in zip(fwd, ns, strict=True):
                impl.reqs[r].context_current_position += n
        self.call(f"update_context_resources{fwd}", lambda i: i.mgr.update_context_resources(
            [i.reqs[r] for r in fwd]))
        for r in fwd:
            q = self.impls[0].reqs[r]
            if q.context_current_position == q.prompt_len:
                self.phase[r] = GENERATION
                for impl in self.impls:
                    impl.reqs[r].state = impl.gen_state

    def generation_step(self, rng: random.Random) -> None:
        """try_allocate (batched) a subset of generation requests, revert some, forward the
        rest with random accepted counts."""
        gen = [r for r in self.rids(GENERATION) if self.cached(r) and rng.random() < 0.8]
        if not gen:
            return
        res = self.call(f"try_allocate_generation{gen}", lambda i: self.batched(
            i, "try_allocate_generation", "try_allocate_generation_batch", gen))
        grown = [r for r, ok in zip(gen, res[1], strict=True) if ok]
        reverted = [r for r in gen if rng.random() < 0.3]
        # NOTE: under draft_record_before_resize a failed grow keeps its record, so the revert
        # may raise INV-LEN (the bug that policy models): revert one per call then.
        split = self.policy.draft_record_before_resize
        for group in filter(None, [[r] for r in reverted] if split else [reverted]):
            self.call(f"revert_allocate_generation{group}", lambda i, g=group: self.batched(
                i, "revert_allocate_generation", "revert_allocate_generation_batch", g))
        fwd = [r for r in grown if r not in reverted]
        if not fwd:
            return
        acc = [rng.randint(0, self.impls[0].reqs[r].draft_len) for r in fwd]
        for impl in self.impls:
            if impl.has_kv:
                qs = [impl.reqs[r] for r in fwd]
                impl.mgr.forward_write(qs, [impl.mgr.get_history(r) for r in fwd],
                                       [1 + q.draft_len for q in qs])
        def update(i: Impl) -> None:
            if i.batch:
                i.mgr.update_resources_batch([i.reqs[r] for r in fwd], acc)
                return
            for r, a in zip(fwd, acc, strict=True):
                i.mgr.update_resources([i.reqs[r]], [a])

        self.call(f"update_resources{fwd}{acc}", update)

    def victim_step(self, rng: random.Random) -> None:
        """suspend / evict / resume / free one random request."""
        live = [r for r in range(self.cfg.num_requests) if self.cached(r)]
        if not live:
            return
        rid = rng.choice(live)
        kind = rng.choice(["suspend", "evict", "resume", "free"])
        if kind == "free" and self.phase[rid] != GENERATION:
            kind = "suspend"
        self.call(f"{kind}({rid})", lambda i: getattr(i.mgr, {
            "suspend": "suspend_request", "evict": "evict_to_host",
            "resume": "resume_request", "free": "free_resources"}[kind])(i.reqs[rid]))
        if kind == "free" and not self.cached(rid):
            self.phase[rid] = DONE

    def misuse_step(self, rng: random.Random) -> None:
        """A call the protocol forbids (must raise the same error everywhere, changing
        nothing) or allows in odd places."""
        rid = rng.randrange(self.cfg.num_requests)
        if rid not in self.impls[0].reqs:
            return
        kind = rng.choice(["resize", "negative", "free", "update_ctx", "suspend"])
        if kind == "resize" and self.phase[rid] == CONTEXT:
            self.call(f"resize_context({rid},1)",
                      lambda i: i.mgr.resize_context(i.reqs[rid], 1))
        elif kind == "negative" and self.phase[rid] == CONTEXT:
            self.call(f"resize_context({rid},-1)",
                      lambda i: i.mgr.resize_context(i.reqs[rid], -1))
        elif kind == "free" and self.phase[rid] != CONTEXT:
            self.call(f"free({rid})", lambda i: i.mgr.free_resources(i.reqs[rid]))
            self.phase[rid] = DONE
        elif kind == "suspend":
            self.call(f"suspend({rid})", lambda i: i.mgr.suspend_request(i.reqs[rid]))

    def random_step(self, rng: random.Random) -> None:
        step = rng.choices([self.arrive, self.context_step, self.generation_step,
                            self.victim_step, self.misuse_step], weights=[3, 4, 4, 2, 1])[0]
        step(rng)
        self.check()
