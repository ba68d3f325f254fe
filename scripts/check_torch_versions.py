"""Run a short engine check on each given torch and print one table row per version.

    python scripts/check_torch_versions.py [PYTHON ...] [--engine DIR] [--keep DIR]

Each PYTHON is the interpreter of a virtual environment holding one torch release with the engine's
other packages (numpy, SimpleITK, slicerio, pyyaml, tqdm, pillow); default: every
``torch-*/bin/python`` under ``--venvs`` (default: ``venvs/`` beside the repository). The engine comes
from ``--engine`` (default: this checkout), put first on ``PYTHONPATH``. Every check is a process of its own, timed:

- ``layers``: RecResACNet's fast CPU layers against PyTorch's own, 2D and 3D (outputs without
  gradients within 1e-5, training gradients within 1e-4 of their largest);
- ``2D sample``: ``drdm augment`` of a small 2D image with the bundled 2D model (from-depth, depth 4);
- ``training``: ``drdm train``, one step at 16^3 on a small 3D phantom (its model serves the next two);
- ``3D sample``: ``drdm augment`` of the 3D phantom with that model (from-depth, depth 4);
- ``augment + labels``: ``drdm augment`` end to end, the 3D phantom and its label map, 2 samples.

The table (Markdown) gives pass or FAIL and seconds per check, and the fast layers' fallback lines
seen (``drdm_engine.model.cpu.probe``); a failing check's last error line follows it. Not run by CI
(CI keeps the pinned torch); ``notes/torch_versions.md`` records the last run.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FALLBACK_LINE = re.compile(r"torch \S+: oneDNN (\dD .*?) not used \((\w+)?.*")
TIMEOUT_S = 900


def make_inputs(folder: Path) -> None:
    """A small 3D phantom (int16, 24 x 20 x 16) and 2D image (40 x 32), each with a 3-label map."""
    import numpy as np
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    for shape, name in (((16, 20, 24), "phantom3d"), ((32, 40), "image2d")):
        grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
        radius = np.sqrt(sum(axis ** 2 for axis in grid))
        labels = (radius < 0.7).astype(np.uint8) + (radius < 0.3)
        image = np.array([-800.0, 40.0, 300.0])[labels] + rng.normal(0, 10, shape)
        sitk.WriteImage(sitk.GetImageFromArray(image.astype(np.int16)), str(folder / f"{name}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(labels), str(folder / f"{name}_labels.nii.gz"))


def compare_layers() -> None:
    """The network with the fast layers against PyTorch's own layers, on this torch; raises on a
    difference beyond fp32 rounding."""
    import torch

    from drdm_engine.model.layer_choice import LAYERS
    from drdm_engine.model.network import RecResACNet

    print(f"torch {torch.__version__}, layer set {type(LAYERS).__name__}")
    for ndims, side in ((2, 32), (3, 16)):
        torch.manual_seed(0)
        model = RecResACNet(ndims, timesteps=8)
        image, t = torch.rand((2, 1) + (side,) * ndims), torch.tensor([7, 3])
        with torch.inference_mode():
            fast = model.eval()(image, t)
            with LAYERS.reference():
                reference = model(image, t)
        gradients = []
        for layers in (contextlib.nullcontext(), LAYERS.reference()):
            model.zero_grad()
            with layers:
                model.train()(image[:1], t[:1]).square().sum().backward()
            gradients.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        output_error = float((fast - reference).abs().max())
        gradient_error = float((gradients[0] - gradients[1]).abs().max() / gradients[1].abs().max())
        print(f"{ndims}D: max |fast - reference| {output_error:.2e}, gradients {gradient_error:.2e} (relative)")
        if output_error > 1e-5 or gradient_error > 1e-4:
            raise SystemExit(f"{ndims}D fast layers differ from PyTorch's own")


@dataclass
class Outcome:
    """One check's result: passed, seconds, fallback lines and the last error line."""

    passed: bool
    seconds: float
    fallbacks: list[str] = field(default_factory=list)
    error: str = ""


def run_check(command: list[str], engine: Path) -> Outcome:
    """``command`` in a process of its own with ``engine`` first on ``PYTHONPATH``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(engine), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", env=env, timeout=TIMEOUT_S)
        passed, output = done.returncode == 0, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        passed, output = False, f"{expired.stderr or ''}\ntimed out after {TIMEOUT_S} s"
    lines = [line.strip() for line in re.split(r"[\r\n]", output) if line.strip()]
    fallbacks = [match.group(0) for match in map(FALLBACK_LINE.search, lines) if match]
    return Outcome(passed, time.perf_counter() - start, fallbacks, "" if passed else (lines or ["no output"])[-1])


def checks(python: str, work: Path) -> dict[str, list[str]]:
    """The engine checks for ``python`` in ``work`` (which holds :func:`make_inputs`), in order."""
    engine = [python, "-m", "drdm_engine"]
    phantom, model = str(work / "phantom3d.nii.gz"), str(work / "training" / "model.pt")
    short = ["--recovery", "from-depth", "--depth", "4", "--samples", "1", "--seed", "0"]
    return {
        "layers": [python, str(Path(__file__).resolve()), "--compare-layers"],
        "2D sample": engine + ["augment", str(work / "image2d.nii.gz"), "--model", "cmr2d", *short,
                               "--out", str(work / "sample2d")],
        "training": engine + ["train", "--data", phantom, "--size", "16", "--steps", "1", "--batch-size", "1",
                              "--out", str(work / "training")],
        "3D sample": engine + ["augment", phantom, "--model", model, *short, "--out", str(work / "sample3d")],
        "augment + labels": engine + ["augment", phantom, "--labels", str(work / "phantom3d_labels.nii.gz"),
                                      "--model", model, "--recovery", "from-depth", "--depth", "8",
                                      "--samples", "2", "--seed", "1", "--out", str(work / "labels")],
    }


def torch_version(python: str) -> str:
    """The torch version ``python`` imports, or why it imports none."""
    done = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else f"no torch ({python})"


def check_python(python: str, engine: Path, work: Path) -> tuple[str, dict[str, Outcome]]:
    """Every check for one interpreter: its torch version and the outcomes by check name."""
    work.mkdir(parents=True, exist_ok=True)
    prepared = run_check([python, str(Path(__file__).resolve()), "--make-inputs", str(work)], engine)
    if not prepared.passed:
        return torch_version(python), {"inputs": prepared}
    return torch_version(python), {name: run_check(command, engine) for name, command in checks(python, work).items()}


def cpu_model() -> str:
    """The CPU's model name (``lscpu`` on Linux), else what ``platform`` knows."""
    try:
        listing = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        listing = ""
    names = [line.split(":", 1)[1].strip() for line in listing.splitlines() if line.startswith("Model name")]
    return names[0] if names else platform.processor() or platform.machine()


def table(rows: list[tuple[str, dict[str, Outcome]]]) -> str:
    """The Markdown table of ``rows`` (fallbacks as the calls they concern and the error's type) and,
    under it, every fallback line seen and each failure's last error line."""
    names = list(next((outcomes for _, outcomes in rows if "inputs" not in outcomes), {"inputs": None}))
    lines = ["| torch | " + " | ".join(names) + " | fallback lines |", "|---" * (len(names) + 2) + "|"]
    failures, fallbacks = [], []
    for version, outcomes in rows:
        cells = []
        for name in names:
            outcome = outcomes.get(name)
            cells.append("not run" if outcome is None else
                         f"{'pass' if outcome.passed else '**FAIL**'} {outcome.seconds:.1f} s")
            if outcome is not None and not outcome.passed:
                failures.append(f"- torch {version}, {name}: {outcome.error}")
        seen = sorted({line for outcome in outcomes.values() for line in outcome.fallbacks})
        fallbacks += [f"- {line}" for line in seen]
        short = ["{} ({})".format(*FALLBACK_LINE.search(line).groups()) for line in seen]
        lines.append(f"| {version} | " + " | ".join(cells) + " | " + ("; ".join(short) or "none") + " |")
    return "\n".join(lines + [""] + (fallbacks or ["no fallback lines"]) + ([""] + failures if failures else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pythons", nargs="*", help="interpreters to check (default: VENVS/torch-*/bin/python)")
    parser.add_argument("--venvs", type=Path, default=ROOT.parent / "venvs",
                        help="folder of one venv per torch release, torch-X.Y.Z (default: venvs/ beside the repository)")
    parser.add_argument("--engine", type=Path, default=ROOT, help="folder holding drdm_engine (default: this checkout)")
    parser.add_argument("--keep", type=Path, help="write the checks' files under this folder and keep them")
    parser.add_argument("--compare-layers", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--make-inputs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compare_layers:
        return compare_layers()
    if args.make_inputs:
        return make_inputs(args.make_inputs)
    pythons = args.pythons or sorted(glob.glob(str(args.venvs / "torch-*" / "bin" / "python")),
                                     key=lambda p: [int(n) for n in re.findall(r"\d+", Path(p).parents[1].name)])
    if not pythons:
        raise SystemExit(f"no interpreters given and none found under {args.venvs}/torch-*/bin/python")
    print(f"{time.strftime('%Y-%m-%d')}, {cpu_model()}, {os.cpu_count()} cores, engine {args.engine.resolve()}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="drdm_torch_versions_") as scratch:
        base = args.keep or Path(scratch)
        rows = []
        for index, python in enumerate(pythons):
            rows.append(check_python(python, args.engine.resolve(), base / f"python{index}"))
            print(f"checked {rows[-1][0]} ({python})", file=sys.stderr, flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
