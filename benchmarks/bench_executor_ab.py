"""A/B of one reference executor iteration (1,000 live requests) between two kvspec installs,
interleaved: each repeat runs one subprocess per install, the order flipped every repeat
(``interleave.py``), and the ratio is the median of the paired ratios. It separates "this
machine is slower today" from "the code got slower": run an old commit next to the current one.

    python benchmarks/bench_executor_ab.py --a PATH_A --b PATH_B [--repeats 6] [--json PATH]

``PATH_A``/``PATH_B``: folders put on ``PYTHONPATH`` that hold an installed ``kvspec`` (e.g.
``git archive COMMIT | tar -x -C /tmp/src && pip install --no-deps --target /tmp/site /tmp/src``).
Each subprocess times 100 iterations after 40 of warm-up (CPU clock of its thread) at
``max_batch_size`` 256 and 1,024 and reports the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from interleave import machine_info, run_interleaved

CHILD = r'''
import json, random, statistics, sys, time
from kvspec.config import Config
from kvspec.policy import get_policy
from kvspec.reference import LlmRequest
from kvspec.reference.executor import ReferenceExecutor
mbs = int(sys.argv[1])
cfg = Config(tokens_per_block=16, num_gpu_pages=40_000, num_host_pages=40_000,
             num_requests=1000, max_num_tokens=8192, max_batch_size=mbs, attention_dp=False)
ex = ReferenceExecutor(cfg, get_policy("pr13805-reviewed"), seed=1)
rng = random.Random(0)
for i in range(1000):
    ex.add_request(LlmRequest(i, prompt_len=rng.randint(16, 512), context_chunk_size=512,
                              draft_len=rng.randint(0, 3), max_new_tokens=10**9))
for _ in range(40):
    ex.step()
ts = []
for _ in range(100):
    t0 = time.thread_time()
    ex.step()
    ts.append(time.thread_time() - t0)
print(json.dumps(statistics.median(ts)))
'''


def child(path: str, mbs: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = path
    p = subprocess.run([sys.executable, "-c", CHILD, str(mbs)], env=env, capture_output=True,
                       text=True, check=True, cwd="/")
    return float(json.loads(p.stdout))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="PYTHONPATH of install A (e.g. the old commit)")
    ap.add_argument("--b", required=True, help="PYTHONPATH of install B (e.g. the new one)")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args(argv)
    out: dict[str, Any] = {"machine": machine_info(), "command": " ".join(["python", *sys.argv]),
                           "a": a.a, "b": a.b, "rows": []}
    for mbs in (256, 1024):
        res = run_interleaved({"A": lambda m=mbs: child(a.a, m),
                               "B": lambda m=mbs: child(a.b, m)}, a.repeats, warmup=0)
        r = res.ratio("B", "A")
        out["rows"].append({"max_batch_size": mbs, **res.to_json([("B", "A")])})
        print(f"batch<={mbs}: A {res.median('A') * 1e3:.3f} ms  B {res.median('B') * 1e3:.3f} ms"
              f"  {r}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
