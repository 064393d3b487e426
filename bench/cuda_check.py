"""The --device cuda path, checked on a machine with a GPU (it can't run in CI, which has none).

    python bench/cuda_check.py [--json FILE]

1. both bundled models load onto the GPU, in eval mode;
2. greedy generation with the reference loop on the GPU equals transformers' generate() on the GPU, and the CPU's;
3. every exercise's reference scores full marks with the learner's side on the GPU (InProcessSubmission(device="cuda"));
4. tokens/s of greedy generation, GPU against CPU.
Prints one line per check and exits non-zero if any fails.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no GPU visible to torch; run this on a machine with one")
        return 2

    from llmstudy.grader.runner import grade
    from llmstudy.grader.submission import InProcessSubmission
    from llmstudy import models
    from llmstudy.catalog import EXERCISES
    import importlib

    figures: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "python": platform.python_version()}
    failures = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        print(f"{'PASS' if ok else 'FAIL'}  {name}{'  ' + detail if detail else ''}", flush=True)
        if not ok:
            failures.append(name)

    for name in ("smollm2", "minilm"):
        start = time.perf_counter()
        model, _ = models.load(name, "cuda")
        seconds = time.perf_counter() - start
        devices = {p.device.type for p in model.parameters()}
        check(f"load {name} on cuda", devices == {"cuda"} and not model.training, f"{seconds:.1f} s, params on {devices}")

    from llmstudy.solutions.generation import generate
    gpu_model, tok = models.load("smollm2", "cuda")
    cpu_model, _ = models.load("smollm2", "cpu")
    ids = tok("The three primary colours are", return_tensors="pt").input_ids
    with torch.no_grad():
        ours = generate(gpu_model, ids.cuda(), 24).cpu()
        theirs = gpu_model.generate(ids.cuda(), max_new_tokens=24, do_sample=False).cpu()
        on_cpu = generate(cpu_model, ids, 24)
    check("greedy loop on cuda == generate() on cuda", torch.equal(ours, theirs), repr(tok.decode(ours[0, ids.shape[1]:])))
    check("greedy on cuda == greedy on cpu", torch.equal(ours, on_cpu))

    for ex in EXERCISES:
        namespace = vars(importlib.import_module(f"llmstudy.solutions.{ex.id}"))
        start = time.perf_counter()
        result = grade(ex.id, InProcessSubmission(namespace, ex.id, device="cuda"))
        failed = [f"{t.name}: {t.message}" for t in result.tests if not t.passed]
        check(f"reference {ex.id} graded with the learner side on cuda", result.score == result.max_score > 0,
              f"{result.score:g}/{result.max_score:g} in {time.perf_counter() - start:.1f} s" +
              (f"; {failed[0][:200]}" if failed else ""))

    for device, model in (("cuda", gpu_model), ("cpu", cpu_model)):
        x = ids.to(device)
        with torch.no_grad():
            generate(model, x, 4)                            # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            n = generate(model, x, 64).shape[1] - x.shape[1]
            if device == "cuda":
                torch.cuda.synchronize()
        figures[f"greedy_tokens_per_s_{device}"] = round(n / (time.perf_counter() - start), 1)
    figures["cpu_threads"] = torch.get_num_threads()
    print(json.dumps(figures))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures | {"failures": failures}, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
