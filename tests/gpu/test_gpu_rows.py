"""The row-tensor API equals the object API (batched): same results, same raised error types,
identical ``snapshot_state`` (page ids and free-stack order included) and request fields, on
random runs where the pool runs out often. (Object batch == single calls in order is
test_gpu_lockstep's; the fast paths against single calls directly are tested below.)"""

from __future__ import annotations

import random

import pytest
import torch
from budget import scaled
from gpu_helpers import DEVICES, gpu_impl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvspec.config import Config
from kvspec.errors import InvalidArgument, KVSpecError, ProtocolError
from kvspec.gpu_impl import GpuRequest, Manager
from kvspec.policy import DESIGN_PRESETS, PRESETS

POLICIES = sorted(set(PRESETS) - set(DESIGN_PRESETS))  # those: test_gpu_design.py
SMALL = Config(tokens_per_block=2, num_gpu_pages=9, num_host_pages=4, num_requests=5,
               max_prompt_len=9, max_draft_len=3, max_util_for_resume=1, max_rewind_len=3)


def _none(_: object) -> None:
    return None


#: (page_moves, read_each) of the row manager: the CPU default, the accelerator default
#: (fixed-shape page moves, pending checks read in one stacked read) run on the CPU, and the mix
MODES = [("compact", True), ("fixed", False), ("compact", False)]


def row_manager(cfg: Config, policy_name: str, mode: tuple[str, bool] | None,
                device: str = "cpu", **kw: int) -> Manager:
    """A torch manager on ``device`` running the row API's strategies of ``mode`` (None: the
    device's defaults)."""
    if mode is None:
        return Manager(cfg, PRESETS[policy_name], device=device, **kw)
    m = Manager(cfg, PRESETS[policy_name], device=device, page_moves=mode[0], **kw)
    m.read_each = mode[1]
    return m


class Trio:
    """The same protocol on the row API and the object batch API (the single-call lambdas are
    kept for reading; only the first two managers are compared). Batches are random subsets
    in random order, or runs of consecutive slots (the row API's slice path)."""

    def __init__(self, cfg: Config, policy_name: str,
                 mode: tuple[str, bool] | None = MODES[0], device: str = "cpu") -> None:
        policy = PRESETS[policy_name]
        self.policy = policy
        self.row = row_manager(cfg, policy_name, mode, device, kv_width=1)
        self.obj = gpu_impl(cfg, policy, True).mgr
        self.seq = gpu_impl(cfg, policy, False).mgr
        self.reqs: dict[str, dict[int, GpuRequest]] = {"row": {}, "obj": {}, "seq": {}}
        self.n = cfg.num_requests

    def run(self, name: str, row_fn, obj_fn, seq_fn) -> object:  # type: ignore[no-untyped-def]
        out = []
        for fn, mgr in ((row_fn, self.row), (obj_fn, self.obj)):
            before = mgr.snapshot_state()
            try:
                r = fn()
                out.append(("ok", r.tolist() if isinstance(r, torch.Tensor) else r))
            except KVSpecError as exc:
                out.append(("raise", type(exc).__name__))
                assert mgr.snapshot_state() == before, f"{name}: raise mutated state"
        assert out[0] == out[1], f"{name}: {out}"
        assert self.row.snapshot_state() == self.obj.snapshot_state(), f"{name}: states differ"
        self.row.check_integrity()
        return out[0]

    def check_mirror(self) -> None:
        """The mirror holds exactly the object API's request fields."""
        rq = list(self.reqs["row"].values())
        if rq:
            mirror = [GpuRequest(q.request_id) for q in rq]
            self.row.store_requests(mirror)
            objs = [self.reqs["obj"][q.request_id] for q in rq]
            assert [(a.context_current_position, a.py_ctx_pre_resize_cap) for a in mirror] == [
                (b.context_current_position, b.py_ctx_pre_resize_cap) for b in objs]

    def step(self, rng: random.Random) -> None:
        kind = rng.choice(["arrive", "resize", "revert_ctx", "update_ctx", "grow", "revert_gen",
                           "trim", "suspend", "free", "evict", "resume", "bad"])
        live = [r for r in range(self.n) if self.obj.has_cache(r)]
        rids = rng.sample(range(self.n), rng.randint(0, self.n))
        if kind == "arrive":
            rid = rng.randrange(self.n)
            if self.obj.has_cache(rid):
                return
            p, d = rng.randint(1, 9), rng.randint(0, 3)
            for key in self.reqs:
                self.reqs[key][rid] = GpuRequest(rid, prompt_len=p, context_chunk_size=3,
                                                 draft_len=d)
            self.run("prepare", lambda: self.row.prepare_context(self.reqs["row"][rid]),
                     lambda: self.obj.prepare_context(self.reqs["obj"][rid]),
                     lambda: self.seq.prepare_context(self.reqs["seq"][rid]))
            self.row.load_requests([self.reqs["row"][rid]])
            return
        if rng.random() < 0.4:  # a run of consecutive slots
            lo = rng.randrange(self.n)
            rids = list(range(lo, rng.randint(lo + 1, self.n)))
        rids = [r for r in rids if r in self.reqs["obj"]]
        rows = torch.tensor(rids, dtype=torch.int64)
        o = [self.reqs["obj"][r] for r in rids]
        s = [self.reqs["seq"][r] for r in rids]
        if kind == "resize":
            n = [rng.randint(0, 4) for _ in rids]
            self.run("resize", lambda: self.row.resize_context_rows(rows, torch.tensor(n)),
                     lambda: self.obj.resize_context_batch(o, n),
                     lambda: [self.seq.resize_context(q, k) for q, k in zip(s, n, strict=True)])
        elif kind == "revert_ctx" and not self.policy.swa_scratch_reuse:
            self.run("revert_ctx", lambda: self.row.revert_allocate_context_rows(rows),
                     lambda: self.obj.revert_allocate_context_batch(o),
                     lambda: [self.seq.revert_allocate_context(q) for q in s])
        elif kind == "update_ctx":
            pos = [min(self.obj.get_capacity(r), self.obj.get_history(r) + rng.randint(0, 3))
                   for r in rids]
            old = [q.context_current_position for q in o]
            for q, p in zip(o + s, pos + pos, strict=True):
                q.context_current_position = p
            res = self.run("update_ctx",
                     lambda: self.row.update_context_resources_rows(rows, torch.tensor(pos)),
                     lambda: self.obj.update_context_resources(o),
                     lambda: self.seq.update_context_resources(s))
            if res[0] == "raise":  # the caller's positions were not taken
                for q, p in zip(o + s, old + old, strict=True):
                    q.context_current_position = p
        elif kind == "grow":
            d = [q.draft_len for q in o]
            self.run("grow", lambda: self.row.try_allocate_generation_rows(rows, torch.tensor(d)),
                     lambda: self.obj.try_allocate_generation_batch(o),
                     lambda: [self.seq.try_allocate_generation(q) for q in s])
        elif kind == "revert_gen" and not self.policy.draft_record_before_resize:
            self.run("revert_gen", lambda: self.row.revert_allocate_generation_rows(rows),
                     lambda: self.obj.revert_allocate_generation_batch(o),
                     lambda: _none([self.seq.revert_allocate_generation(q) for q in s]))
        elif kind == "trim":
            acc = [rng.randint(0, q.draft_len) for q in o]
            self.run("trim", lambda: self.row.update_resources_rows(rows, torch.tensor(acc)),
                     lambda: self.obj.update_resources_batch(o, acc),
                     lambda: _none([self.seq.update_resources([q], [a])
                                    for q, a in zip(s, acc, strict=True)]))
        elif kind in ("suspend", "free", "evict", "resume") and live:
            rid = rng.choice(live)  # (evict and resume: partial residency under the fast paths)
            op = {"suspend": "suspend_request", "free": "free_resources",
                  "evict": "evict_to_host", "resume": "resume_request"}[kind]
            self.run(kind, lambda: getattr(self.row, op)(self.reqs["row"][rid]),
                     lambda: getattr(self.obj, op)(self.reqs["obj"][rid]),
                     lambda: getattr(self.seq, op)(self.reqs["seq"][rid]))
        elif kind == "bad":
            with pytest.raises(ProtocolError):
                self.row.try_allocate_generation_rows(torch.tensor([self.n]), torch.tensor([0]))
            if len(rids) >= 1:
                dup = torch.tensor([rids[0], rids[0]])
                with pytest.raises(InvalidArgument):
                    self.row.update_resources_rows(dup, torch.tensor([0, 0]))


@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"{m[0]}-{'each' if m[1] else 'stacked'}")
@pytest.mark.parametrize("policy_name", POLICIES)
@settings(max_examples=scaled(8), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_rows_equal_object_and_sequential(policy_name: str, mode: tuple[str, bool],
                                          seed: int) -> None:
    rng = random.Random(seed)
    trio = Trio(SMALL, policy_name, mode)
    for _ in range(60):
        trio.step(rng)
        trio.check_mirror()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("policy_name", ["pr13805-reviewed", "pr14849"])
def test_rows_on_device_equal_object_api(device: str, policy_name: str) -> None:
    """The row manager on ``device`` with that device's default strategies (on CUDA: pending
    checks read in one sync, fixed-shape page moves) against the object API on the CPU."""
    for seed in range(4):
        rng = random.Random(seed)
        trio = Trio(SMALL, policy_name, None, device)
        for _ in range(60):
            trio.step(rng)
            trio.check_mirror()


@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"{m[0]}-{'each' if m[1] else 'stacked'}")
@pytest.mark.parametrize("layout", ["permutation", "run"])
def test_fast_path_pops_and_pushes_like_sequential(layout: str, mode: tuple[str, bool]) -> None:
    """Large batch, one page per row or several, rows in a random order or as a run of
    slots (sliced for the halves): the one-page paths and the general paths leave the state
    of the single calls."""
    cfg = Config(tokens_per_block=4, num_gpu_pages=400, num_host_pages=0, num_requests=64,
                 max_util_for_resume=1)
    policy = PRESETS["pr13805-reviewed"]
    row = row_manager(cfg, "pr13805-reviewed", mode)
    seq = Manager(cfg, policy, device="cpu")
    rq = [GpuRequest(i, prompt_len=5, context_chunk_size=5, draft_len=i % 4) for i in range(64)]
    sq = [GpuRequest(i, prompt_len=5, context_chunk_size=5, draft_len=i % 4) for i in range(64)]
    for a, b in zip(rq, sq, strict=True):
        row.prepare_context(a)
        seq.prepare_context(b)
    row.load_requests(rq)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1)) \
        if layout == "permutation" else torch.arange(64)
    order = perm.tolist()
    n = torch.tensor([5 + (i % 3) * 4 for i in order])  # 2..5 pages: the general path
    assert row.resize_context_rows(perm, n).all()
    for i, k in zip(order, n.tolist(), strict=True):
        assert seq.resize_context(sq[i], k)
    row.update_context_resources_rows(perm, torch.full((64,), 5))
    for q in sq:
        q.context_current_position = 5
    seq.update_context_resources([sq[i] for i in order])
    assert row.snapshot_state() == seq.snapshot_state()
    d = torch.tensor([i % 4 for i in order])
    for _ in range(4):  # grow (<= 1 page each), revert half, regrow, trim
        if layout == "run" and row.read_each:  # (pending checks never mark a run)
            assert row.req.valid_rows and row.req.valid_rows[-1][4] == 0  # known as a run
        assert row.try_allocate_generation_rows(perm, d).all()
        assert all(seq.try_allocate_generation(sq[i]) for i in order)
        row.revert_allocate_generation_rows(perm[16:48])  # a slice at an offset
        for i in order[16:48]:
            seq.revert_allocate_generation(sq[i])
        assert row.try_allocate_generation_rows(perm[16:48], d[16:48]).all()
        assert all(seq.try_allocate_generation(sq[i]) for i in order[16:48])
        acc = torch.tensor([(i * 7) % (i % 4 + 1) for i in order])
        row.update_resources_rows(perm, acc)
        for i, a in zip(order, acc.tolist(), strict=True):
            seq.update_resources([sq[i]], [a])
        assert row.snapshot_state() == seq.snapshot_state()
        row.check_integrity()


@pytest.mark.parametrize("seed", range(6))
def test_fast_paths_at_full_rows_equal_object_api(seed: int) -> None:
    """Width 3 at 2 tokens per page: rows sit at count == width next to rows that grow and
    shrink, so the masked adds of the one-page paths hit the next row's first entry (and the
    scratch row for the last row); row API == object API after every call."""
    cfg = Config(tokens_per_block=2, num_gpu_pages=40, num_host_pages=0, num_requests=12,
                 max_util_for_resume=1)
    policy = PRESETS["pr13805-reviewed"]
    row = Manager(cfg, policy, device="cpu", max_pages_per_request=3)
    obj = Manager(cfg, policy, device="cpu", max_pages_per_request=3)
    rng = random.Random(seed)
    rq = [GpuRequest(i, prompt_len=3, context_chunk_size=3) for i in range(12)]
    oq = [GpuRequest(i, prompt_len=3, context_chunk_size=3) for i in range(12)]
    for a, b in zip(rq, oq, strict=True):
        row.prepare_context(a)
        obj.prepare_context(b)
    row.load_requests(rq)
    ids = list(range(12))
    rows = torch.tensor(ids)
    sizes = [rng.randint(1, 5) for _ in ids]
    assert row.resize_context_rows(rows, torch.tensor(sizes)).all()
    assert all(obj.resize_context_batch(oq, sizes))
    row.update_context_resources_rows(rows, torch.tensor(sizes))
    for q, s in zip(oq, sizes, strict=True):
        q.context_current_position = s
    obj.update_context_resources(oq)

    def same(name: str, f_row, f_obj) -> None:  # type: ignore[no-untyped-def]
        out = []
        for f in (f_row, f_obj):
            try:
                r = f()
                out.append(r.tolist() if isinstance(r, torch.Tensor) else r)
            except KVSpecError as exc:
                out.append(type(exc).__name__)
        assert out[0] == out[1], (name, out)
        assert row.snapshot_state() == obj.snapshot_state(), name
        row.check_integrity()

    for _ in range(30):
        sel = rng.sample(ids, rng.randint(1, 12))
        r = torch.tensor(sel)
        o = [oq[i] for i in sel]
        d = [rng.randint(0, 1) for _ in sel]
        for q, x in zip(o, d, strict=True):
            q.draft_len = x
        same("grow", lambda: row.try_allocate_generation_rows(r, torch.tensor(d)),  # noqa: B023
             lambda: obj.try_allocate_generation_batch(o))  # noqa: B023
        h = len(sel) // 2
        same("revert", lambda: row.revert_allocate_generation_rows(r[:h]),  # noqa: B023
             lambda: obj.revert_allocate_generation_batch(o[:h]))  # noqa: B023
        same("regrow", lambda: row.try_allocate_generation_rows(r[:h], torch.tensor(d[:h])),  # noqa: B023
             lambda: obj.try_allocate_generation_batch(o[:h]))  # noqa: B023
        acc = [rng.randint(0, x) for x in d]
        same("trim", lambda: row.update_resources_rows(r, torch.tensor(acc)),  # noqa: B023
             lambda: obj.update_resources_batch(o, acc))  # noqa: B023


def _prepared(num_requests: int, num_pages: int) -> Manager:
    """A CPU manager whose requests (prompt 4, 4 tokens per page) are prepared and loaded."""
    cfg = Config(tokens_per_block=4, num_gpu_pages=num_pages, num_host_pages=0,
                 num_requests=num_requests)
    m = Manager(cfg, PRESETS["pr13805-reviewed"], device="cpu")
    reqs = [GpuRequest(i, prompt_len=4, context_chunk_size=4) for i in range(num_requests)]
    for q in reqs:
        m.prepare_context(q)
    m.load_requests(reqs)
    return m


def test_validated_rows_and_slices_skip_checks_until_written() -> None:
    """A slice of a rows tensor that passed the checks is valid; an in-place write to the
    tensor (or any view) makes the next call check again and raise on a duplicate."""
    m = _prepared(8, 64)
    rows = torch.arange(8)
    assert m.resize_context_rows(rows, torch.full((8,), 4)).all()
    m.update_context_resources_rows(rows[2:6], torch.full((4,), 4))  # a slice: no checks
    half = rows[4:]
    half[0] = 5  # rows is now [0..4, 5, 5, 6, 7]... a duplicate inside the slice
    with pytest.raises(InvalidArgument):
        m.update_context_resources_rows(half, torch.full((4,), 4))
    with pytest.raises(InvalidArgument):
        m.update_context_resources_rows(rows, torch.full((8,), 4))
    with pytest.raises(ProtocolError):
        m.update_context_resources_rows(torch.arange(1, 10)[-2:], torch.full((2,), 4))


def test_unknown_page_moves_is_refused() -> None:
    cfg = Config(tokens_per_block=4, num_gpu_pages=8, num_host_pages=0, num_requests=2)
    with pytest.raises(InvalidArgument, match="page_moves='bogus'"):
        Manager(cfg, PRESETS["pr13805-reviewed"], device="cpu", page_moves="bogus")


def test_row_arguments_are_converted_or_refused() -> None:
    """Per-row arguments are int32 fields: int64 tensors and lists are converted; floats,
    values outside int32 and 2-D tensors are refused with InvalidArgument, state unchanged."""
    m = _prepared(2, 16)
    assert m.resize_context_rows([0, 1], torch.tensor([4, 4], dtype=torch.int64)).all()
    before = m.snapshot_state()
    for bad, what in ((torch.tensor([1.0, 2.0]), "must hold integers"),
                      (torch.tensor([2**31, 0]), "outside int32"),
                      (torch.tensor([[1, 2]]), "1-D"),
                      (["a", "b"], "list of ints")):
        with pytest.raises(InvalidArgument, match=what):
            m.resize_context_rows(torch.tensor([0, 1]), bad)  # type: ignore[arg-type]
        assert m.snapshot_state() == before
    with pytest.raises(InvalidArgument, match="rows must hold integers"):
        m.update_context_resources_rows(torch.tensor([0.0, 1.0]), [4, 4])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_cuda_without_cuda_and_unknown_devices_are_refused() -> None:
    cfg = Config(tokens_per_block=4, num_gpu_pages=8, num_host_pages=0, num_requests=2)
    with pytest.raises(InvalidArgument, match="is_available"):
        Manager(cfg, PRESETS["pr13805-reviewed"], device="cuda")
    with pytest.raises(InvalidArgument, match="not a torch device"):
        Manager(cfg, PRESETS["pr13805-reviewed"], device="bogus")
