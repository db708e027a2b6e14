"""The walker's plan table (``spec/walker.py: DecidedGuards``, bounded by ``PLAN_CACHE_SIZE``): its
size and memory after a walk, and the walk's steps/s with the bound against without it.

* ``sizes``: per request count, the plans kept, the plans a walk met, the lookups that
  rebuilt a plan, and the table's memory (the plan lists, their rows and keys, the table),
  with the bound and without it (``max_plans`` = 10**9).
* ``ab``: model-only walks (witnesses off, no shrinking), interleaved blocks with the order
  flipped every repeat (``interleave.run_interleaved``), CPU clock. Variants: ``bounded``
  (the installed walker), ``unbounded`` (the same with ``max_plans`` = 10**9) and, with
  ``--before FILE``, a walker module loaded from a file (e.g. ``git show
  HEAD:spec/walker.py > /tmp/walker_head.py``), in the same interpreter.

    python benchmarks/bench_walker_plans.py --requests 2 --steps 20000 --repeats 12
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from interleave import machine_info, run_interleaved

import kvspec.spec.walker as walker
from kvspec.config import Config
from kvspec.policy import get_policy

UNBOUNDED = 10**9


def _load(path: str) -> ModuleType:
    """A walker module from ``path``, inside the ``kvspec.spec`` package (relative imports)."""
    spec = importlib.util.spec_from_file_location("kvspec.spec._walker_before", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _deep_size(table: dict[Any, Any]) -> int:
    """Bytes of ``table`` with its keys and values, nested lists and tuples counted once."""
    seen: set[int] = set()
    total = sys.getsizeof(table)
    stack: list[Any] = [x for kv in table.items() for x in kv]
    while stack:
        o = stack.pop()
        if id(o) in seen or o is None or isinstance(o, bool) or (
                type(o) is int and -5 <= o <= 256):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, (list, tuple)):
            stack.extend(o)
    return total


def sizes(requests: int, steps: int, policy: str, max_plans: int) -> dict[str, Any]:
    """One walk with a spy on ``DecidedGuards``: table size, keys met, rebuilds, bytes."""
    made: list[Any] = []

    class Spy(walker.DecidedGuards):
        def __init__(self, m: Any) -> None:
            super().__init__(m, max_plans=max_plans)
            self.keys: set[tuple[int, ...]] = set()
            self.built = self.lookups = 0
            made.append(self)

        def guards(self, s: Any) -> Any:
            self.lookups += 1
            self.keys.add(self._key(s))
            return super().guards(s)

        def _plan(self, i: int, s: Any, key: tuple[int, ...]) -> Any:
            self.built += i == 0  # a plan is built action by action, from action 0
            return super()._plan(i, s, key)

    original = walker.DecidedGuards
    walker.DecidedGuards = Spy
    try:
        walker.walk(Config(num_requests=requests), get_policy(policy), steps=steps, seed=1,
                    shrink=False, witnesses=False)
    finally:
        walker.DecidedGuards = original
    d = made[0]
    return {"requests": requests, "max_plans": max_plans, "plans_kept": len(d._plans),
            "keys_met": len(d.keys), "lookups": d.lookups, "plans_built": d.built,
            "bytes": _deep_size(d._plans)}


def ab(requests: int, steps: int, repeats: int, policy: str,
       before: str | None) -> dict[str, Any]:
    """Interleaved steps/s of the variants (module docstring)."""
    walks: dict[str, Callable[..., Any]] = {"bounded": walker.walk}
    unbounded = functools.partial(walker.DecidedGuards, max_plans=UNBOUNDED)

    def walk_unbounded(*args: Any, **kwargs: Any) -> Any:
        original = walker.DecidedGuards
        walker.DecidedGuards = unbounded
        try:
            return walker.walk(*args, **kwargs)
        finally:
            walker.DecidedGuards = original

    walks["unbounded"] = walk_unbounded
    if before is not None:
        walks["before"] = _load(before).walk
    seeds = dict.fromkeys(walks, 0)
    pol = get_policy(policy)

    def variant(name: str) -> Callable[[], None]:
        def run() -> None:
            seeds[name] += 1
            walks[name](Config(num_requests=requests), pol, steps=steps, seed=seeds[name],
                        shrink=False, witnesses=False)
        return run

    res = run_interleaved({n: variant(n) for n in walks}, repeats, clock="cpu", per=steps)
    names = list(walks)
    out: dict[str, Any] = {f"{n}_steps_per_s": round(1 / res.median(n)) for n in names}
    out["ratios"] = [str(res.ratio("bounded", n)) for n in names[1:]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2, help="requests of the A/B walks")
    ap.add_argument("--steps", type=int, default=20_000, help="walker steps per block")
    ap.add_argument("--repeats", type=int, default=12, help="interleaved blocks per variant")
    ap.add_argument("--policy", default="pr13805")
    ap.add_argument("--before", help="a walker module file to compare with (same interpreter)")
    ap.add_argument("--size-steps", type=int, default=30_000, help="steps of the size walks")
    a = ap.parse_args()
    out: dict[str, Any] = {"machine": machine_info(), "sizes": []}
    for n in (1, 2, 3, 6):
        for cap in (walker.PLAN_CACHE_SIZE, UNBOUNDED):
            row = sizes(n, a.size_steps, a.policy, cap)
            out["sizes"].append(row)
            print(json.dumps(row), flush=True)
    out["ab"] = ab(a.requests, a.steps, a.repeats, a.policy, a.before)
    print(json.dumps(out["ab"], indent=1))


if __name__ == "__main__":
    main()
