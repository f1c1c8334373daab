"""The GPU report's parts and the runner that gives each one its own process and time budget.

    python scripts/gpu_report.py --out OUT [--tiny] [--budget NAME=SECONDS ...] [--only NAME ...]

Each part runs in a process of its own (a fresh device: JAX and PyTorch never share one, and one
part's memory or crash never costs another), with a budget in seconds. A part plans its work to
fit its budget (training stops after the last epoch that fits, sub-parts are skipped with a
reason); a part that still runs past it is killed and recorded as skipped, with whatever it had
recorded so far. A part whose budget is 0, or that finds the report's total budget spent, is
skipped with the reason. After every part the JSON and the markdown table are rewritten, so a
report cut short still holds every part that finished.

Adding a part (new model families, several runs in one program, ...): write a function
`my_part(ctx: PartContext) -> dict` in a module of its own (`pthnet_jax/benchmarks/gpu_*.py`),
importing what it needs inside the function; it reads `ctx.tiny` (run in seconds on a CPU: tiny
sizes), `ctx.remaining()` (seconds left of its budget), `ctx.scratch` (its own directory),
`ctx.previous` (earlier parts' results, e.g. `ctx.peak_tflops("bfloat16")`), calls
`ctx.record(key=value)` as numbers become available (kept if it is killed), and returns a dict
with a one-line `"summary"` plus its figures. Then add one entry to `PARTS` below:
`"my_part": Part("pthnet_jax.benchmarks.gpu_mine:my_part", budget_s=60, about="...")`, and keep the
sum of the budgets (`TOTAL_BUDGET_S`) under 8 minutes. `tests/test_gpu_report.py` runs every part
with `--tiny`, so a new part is tested from the day it lands.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.abc
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository (the device machine runs its copy)


@dataclasses.dataclass(frozen=True)
class Part:
    target: str  # "module:function", imported in the part's own process only
    budget_s: float  # seconds on one H200, process start included
    about: str = ""
    tiny_budget_s: float = 90.0  # seconds with --tiny (a loaded 2-core CPU)


# --tiny: compiling the training step of even the tiny model takes about a minute of CPU time
# (several on a loaded shared machine); the other parts take seconds.
TINY_TRAINING_S = 300.0

PARTS: dict[str, Part] = {
    "environment": Part("pthnet_jax.benchmarks.gpu_ceiling:environment", 15,
                        "device, driver, package versions"),
    "ceiling": Part("pthnet_jax.benchmarks.gpu_ceiling:ceiling", 20,
                    "measured bf16 / fp32 matmul rate (8192^3) and copy bandwidth: the peaks of every fraction"),
    "pthnet_float32": Part("pthnet_jax.benchmarks.gpu_pthnet:pthnet_float32", 85,
                           "PTH-Net at FERv39k size, float32: the 20-epoch recipe (as many epochs as fit), "
                           "evaluation every epoch, checkpoints, profile", tiny_budget_s=TINY_TRAINING_S),
    "pthnet_bfloat16": Part("pthnet_jax.benchmarks.gpu_pthnet:pthnet_bfloat16", 45,
                            "the same in bfloat16", tiny_budget_s=TINY_TRAINING_S),
    "pthnet_variants": Part("pthnet_jax.benchmarks.gpu_pthnet:pthnet_variants", 40,
                            "steps per device call: 1, 32, a whole epoch (float32, bfloat16); 2 epochs each",
                            tiny_budget_s=TINY_TRAINING_S),
    "torch_pthnet": Part("pthnet_jax.benchmarks.gpu_torch:pthnet_baseline", 55,
                         "PyTorch baseline on the same data: resident tensors, then the original's data path"),
    "videomae_jax": Part("pthnet_jax.benchmarks.gpu_videomae:videomae_jax", 50,
                         "VideoMAE V2 ViT-g extraction, random weights, bf16 (+ a few windows fp32)"),
    "videomae_torch": Part("pthnet_jax.benchmarks.gpu_torch:videomae_baseline", 25,
                           "batched bf16 PyTorch ViT-g on the same windows"),
    "runs": Part("pthnet_jax.benchmarks.runs:gpu_part", 45,
                 "K = 1, 4, 16, 64 PTH-Net runs in one program: runs x clips/s, the largest K that fits",
                 tiny_budget_s=TINY_TRAINING_S),
    "lstpnet": Part("pthnet_jax.benchmarks.lstpnet:gpu_part", 45,
                    "LSTPNet at full size (224^2, 16 frames, batch 32): Flax f32/bf16 vs PyTorch f32, clips/s",
                    tiny_budget_s=TINY_TRAINING_S),
    "htnet": Part("pthnet_jax.benchmarks.gpu_htnet:htnet_loso", 45,
                  "HTNet LOSO step at the released size, K = 1, 4, 17, 68 subjects in one program vs PyTorch; "
                  "the whole protocol's projected time"),
}
TOTAL_BUDGET_S = 470.0  # the whole report on one H200 (under 8 minutes)
MIN_START_S = 3.0  # a part is not started with less left than this


# ---- inside a part's process --------------------------------------------------------------------

class PartContext:
    def __init__(self, spec: dict[str, Any]):
        self.name, self.tiny = spec["name"], bool(spec["tiny"])
        self.budget_s, self.deadline = float(spec["budget_s"]), float(spec["deadline"])
        self.scratch = Path(spec["scratch"])
        self.previous: dict[str, Any] = spec.get("previous", {})
        self._partial_path = Path(spec["partial"])
        self.partial: dict[str, Any] = {}

    def remaining(self) -> float:
        return self.deadline - time.time()

    def record(self, **values: Any) -> None:
        """Keep figures as they come: a part killed at its budget still reports them."""
        from pthnet_jax.fsutil import atomic_write_json

        self.partial.update(values)
        atomic_write_json(self._partial_path, self.partial)

    def peak_tflops(self, dtype: str) -> float | None:
        """The measured matmul rate of `dtype` ('bfloat16', 'float32'), if the ceiling part ran."""
        return (self.previous.get("ceiling") or {}).get(f"{dtype}_tflops")


def install_folder_packages() -> None:
    """Map `pthnet_jax.convert` / `pthnet_jax.configs` to the top-level `convert/` / `configs/`
    folders (pyproject's package-dir) when pthnet-jax is not installed: the device machine runs the
    working tree's copy with nothing installed. A finder of last resort: an install wins."""
    class _Folders(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            folder = {"pthnet_jax.convert": ROOT / "convert", "pthnet_jax.configs": ROOT / "configs"}.get(name)
            if folder is None or not (folder / "__init__.py").is_file():
                return None
            return importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                          submodule_search_locations=[str(folder)])

    if not any(type(f).__name__ == "_Folders" for f in sys.meta_path):
        sys.meta_path.append(_Folders())


def _child(spec_path: Path) -> int:
    install_folder_packages()
    from pthnet_jax.fsutil import atomic_write_json

    spec = json.loads(spec_path.read_text())
    ctx = PartContext(spec)
    module, function = spec["target"].split(":")
    result = getattr(importlib.import_module(module), function)(ctx)
    # What the part imported beyond the standard library: the packages the device machine must have.
    loaded = {name.partition(".")[0] for name in list(sys.modules)} - set(sys.stdlib_module_names)
    result["imported_packages"] = sorted(n for n in loaded if not n.startswith("_") and n != "pthnet_jax")
    atomic_write_json(Path(spec["result"]), {**ctx.partial, **result})
    return 0


# ---- the runner ---------------------------------------------------------------------------------

def _run_part(name: str, target: str, budget: float, tiny: bool, scratch: Path, previous: dict[str, Any],
              log) -> dict[str, Any]:
    from pthnet_jax.fsutil import atomic_write_json

    work = scratch / name
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    spec = {"name": name, "target": target, "tiny": tiny, "budget_s": budget, "deadline": started + budget,
            "scratch": str(work), "previous": previous, "partial": str(work / "partial.json"),
            "result": str(work / "result.json")}
    for key in ("partial", "result"):
        Path(spec[key]).unlink(missing_ok=True)
    atomic_write_json(work / "spec.json", spec)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if tiny:  # CPU smoke run: compile fast (the tests' setting); parts share one compilation cache
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    grace = 1.0 + 0.05 * budget
    with open(work / "log.txt", "wb") as output:
        child = subprocess.Popen([sys.executable, "-m", "pthnet_jax.benchmarks.gpu_parts", "--child",
                                  str(work / "spec.json")], stdout=output, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
        try:
            code = child.wait(timeout=budget + grace)
        except subprocess.TimeoutExpired:
            code = None
            _kill(child)
    seconds = time.time() - started
    partial = _read_json(work / "partial.json")
    tail = (work / "log.txt").read_bytes()[-3000:].decode(errors="replace")
    log.write(f"\n===== {name} (exit {code}, {seconds:.1f}s) =====\n{tail}\n")
    entry: dict[str, Any] = {"budget_s": budget, "seconds": round(seconds, 2)}
    if code is None:
        return {**entry, "status": "skipped", "partial": partial,
                "reason": f"ran past its budget of {budget:.0f} s (+{grace:.0f} s grace): killed"
                          + (", figures recorded before that are kept" if partial else "")}
    result = _read_json(work / "result.json")
    if code != 0 or result is None:
        last = [line for line in tail.splitlines() if line.strip()][-1:] or ["no output"]
        return {**entry, "status": "failed", "reason": f"exit status {code}: {last[0][:300]}",
                "partial": partial, "log_tail": tail[-1500:]}
    return {**entry, "status": "measured", "result": result}


def _kill(child: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_report(out: Path, tiny: bool = False, budgets: dict[str, float] | None = None,
               total_s: float | None = None, only: list[str] | None = None, scratch: Path | None = None,
               command: str = "", parts: dict[str, Part] | None = None) -> dict[str, Any]:
    """Run every part of `parts` (default `PARTS`) in order; writes OUT/gpu_report.json, .md and
    .log; returns the report."""
    import tempfile

    from pthnet_jax.benchmarks.gpu_table import write_report

    parts = PARTS if parts is None else parts
    budgets = dict(budgets or {})
    unknown = sorted((set(budgets) | set(only or ())) - set(parts))
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; the parts are {list(parts)}")
    total = TOTAL_BUDGET_S if total_s is None else float(total_s)
    if tiny and total_s is None:
        total = sum(p.tiny_budget_s for p in parts.values())
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(scratch or tempfile.mkdtemp(prefix="pthnet-gpu-report-"))
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "command": command,
                              "tiny": tiny, "host": platform.node(), "python": platform.python_version(),
                              "total_budget_s": total, "scratch": str(scratch), "parts": {}}
    started = time.time()
    with open(out / "gpu_report.log", "w") as log:
        for name, part in parts.items():
            budget = budgets.get(name, part.tiny_budget_s if tiny else part.budget_s)
            left = started + total - time.time()
            if only and name not in only:
                entry = {"status": "skipped", "reason": f"not selected (--only {' '.join(only)})", "budget_s": budget}
            elif budget <= 0:
                entry = {"status": "skipped", "reason": f"its budget is {budget:g} s", "budget_s": budget}
            elif left < min(budget, MIN_START_S):
                entry = {"status": "skipped", "budget_s": budget,
                         "reason": f"the report's total budget of {total:.0f} s is spent ({max(left, 0):.0f} s left)"}
            else:
                print(f"[gpu-report] {name}: {part.about} (budget {min(budget, left):.0f} s)", flush=True)
                previous = {k: v["result"] for k, v in report["parts"].items() if v.get("status") == "measured"}
                entry = _run_part(name, part.target, min(budget, left), tiny, scratch, previous, log)
                log.flush()
            entry["about"] = part.about
            report["parts"][name] = entry
            print(f"[gpu-report] {name}: {entry['status']}"
                  + (f" - {entry['reason']}" if "reason" in entry else
                     f" - {entry['result'].get('summary', '')}"), flush=True)
            report["seconds"] = round(time.time() - started, 1)
            write_report(out, report)
    return report


def selfcheck_ok(ctx) -> dict[str, Any]:
    """A part that measures nothing, at once (tests of the runner)."""
    ctx.record(started=True)
    return {"summary": "ok", "budget_seen_s": ctx.budget_s, "previous_parts": sorted(ctx.previous)}


def selfcheck_hang(ctx) -> dict[str, Any]:
    """A part that runs past any budget after recording a figure (tests of the runner's kill path)."""
    ctx.record(started=True)
    time.sleep(3600)
    return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_report.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder of gpu_report.json, gpu_report.md, gpu_report.log")
    parser.add_argument("--tiny", action="store_true", help="every part at tiny sizes (seconds, on a CPU)")
    parser.add_argument("--budget", action="append", default=[], metavar="NAME=SECONDS",
                        help="override a part's budget (0: skip it); repeatable")
    parser.add_argument("--total", type=float, help=f"the whole report's budget (default {TOTAL_BUDGET_S:.0f} s)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"run only these parts of {list(PARTS)}")
    parser.add_argument("--scratch", type=Path, help="working folder (default: a new temporary one)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child)
    if args.out is None:
        parser.error("--out is required")
    budgets = {}
    for item in args.budget:
        name, _, value = item.partition("=")
        try:
            budgets[name] = float(value)
        except ValueError:
            parser.error(f"--budget {item!r}: expected NAME=SECONDS")
    install_folder_packages()
    try:
        report = run_report(args.out, args.tiny, budgets, args.total, args.only, args.scratch,
                            command=" ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]))
    except ValueError as err:
        parser.error(str(err))
    print((args.out / "gpu_report.md").read_text())
    return 0 if all(p["status"] != "failed" for p in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
