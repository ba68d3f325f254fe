"""Issue 20, reliability second round: dataset mode, lists, nnU-Net datasets, pairs, train/evaluate,
checkpoints, import and pipeline transforms get the rails the single-image run has.

Every test drives a public entry point (``drdm_engine.cli.main`` in this process, or ``python -m
drdm_engine`` in a child process) on tiny generated files, and asserts the behaviour the issue asks for.
Memory cases run in a child process under an address-space limit (RLIMIT_AS), so that a run without a
memory guard fails fast instead of exhausting the machine; disk-full cases write into a small tmpfs
(root only, skipped elsewhere).
"""
from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
import traceback
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import rotation
from drdm_engine.cli import main

FAST = ["--model", "none", "--size", "16", "--samples", "1"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
GIB = 2 ** 30
MANIFEST = "drdm_manifest.json"


# --- helpers ------------------------------------------------------------------------------------------
def cli(capsys, *argv) -> tuple[int | None, str]:
    """``drdm ARGV`` in this process: (exit code, stderr). An exception escaping ``main`` is returned as
    its traceback in stderr (code ``None``), so that a test fails with what the user would see."""
    tb = ""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    except Exception:  # noqa: BLE001 - what escaped is the defect
        code, tb = None, traceback.format_exc()
    return code, capsys.readouterr().err + tb


def drdm(*argv, memory_gib: int | None = None, env: dict | None = None, timeout: float = 180
         ) -> subprocess.CompletedProcess:
    """``python -m drdm_engine ARGV`` in a child process, optionally under an address-space limit (give such
    a run ``--device cpu``: a CUDA context does not start under one)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory_gib * GIB, memory_gib * GIB))

    return subprocess.run([sys.executable, "-m", "drdm_engine", *map(str, argv)], env=env or ENV,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit if memory_gib else None)


def one_error(code, err: str, *fragments: str) -> str:
    """Assert exit code 2, exactly one ``drdm: error:`` line containing ``fragments``, no traceback;
    returns the line."""
    assert "Traceback" not in err, err[-2500:]
    lines = [line for line in err.splitlines() if line.startswith("drdm: error:")]
    assert code == 2 and len(lines) == 1, (code, err[-2500:])
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def volume(path: Path, shape=(8, 16, 16), seed: int = 0, dtype=np.float32, spacing=None, origin=None,
           direction=None) -> Path:
    """A random (non-constant) volume of array ``shape`` (z, y, x) written with SimpleITK."""
    array = np.random.default_rng(seed).normal(100, 20, shape).astype(dtype)
    image = sitk.GetImageFromArray(array)
    if spacing is not None:
        image.SetSpacing(spacing)
    if origin is not None:
        image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(tuple(np.asarray(direction, float).ravel()))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def label_map(path: Path, like: Path) -> Path:
    """A two-label map on the grid of the image ``like``."""
    image = sitk.ReadImage(str(like))
    shape = sitk.GetArrayViewFromImage(image).shape
    idx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    labels = np.zeros(shape, np.uint8)
    labels[sum(i ** 2 for i in idx) < 0.6] = 1
    labels[sum(i ** 2 for i in idx) < 0.2] = 2
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path))
    return path


def nnunet(root: Path, ids, channels: int = 1, shape=(8, 16, 16), **geometry) -> Path:
    """An nnU-Net v2 raw dataset: ``imagesTr/<id>_<c:04d>.nii.gz``, ``labelsTr/<id>.nii.gz``, ``dataset.json``."""
    for n, case in enumerate(ids):
        for c in range(channels):
            volume(root / f"imagesTr/{case}_{c:04d}.nii.gz", shape, seed=10 * n + c, **geometry)
        (root / "labelsTr").mkdir(parents=True, exist_ok=True)
        label_map(root / f"labelsTr/{case}.nii.gz", root / f"imagesTr/{case}_0000.nii.gz")
    meta = {"channel_names": {str(c): f"ch{c}" for c in range(channels)}, "labels": {"background": 0, "a": 1, "b": 2},
            "numTraining": len(ids), "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def small_file_system(path: Path, megabytes: int) -> Path:
    """A tmpfs of ``megabytes`` mounted at ``path`` (root only; the test is skipped elsewhere)."""
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    return path


def manifest_paths(out: Path) -> list[str]:
    """Every output path a dataset manifest lists (samples and copied originals)."""
    manifest = json.loads((out / MANIFEST).read_text())
    paths = []
    for case in manifest["cases"]:
        for entry in [case.get("originals") or {}] + case["samples"]:
            paths += entry.get("images", []) + [entry[k] for k in ("labels", "field") if entry.get(k)]
    return paths


def train_args(data, out, *extra) -> list[str]:
    return ["train", "--data", str(data), "--size", "16", "--control-size", "16", "--steps", "1", "--out", str(out),
            "--no-progress", "--device", "cpu", "--validate-every", "0", *map(str, extra)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny 2D and 3D models trained by ``drdm train`` (one step), and their training volumes."""
    root = tmp_path_factory.mktemp("models")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        found = {}
        for nd, shape in ((2, (12, 10)), (3, (8, 12, 10))):
            for i in range(2):
                volume(root / f"data{nd}d/v{i}.nrrd", shape, seed=i)
            assert main(train_args(root / f"data{nd}d", root / f"run{nd}d", "--batch-size", "1")) == 0
            found[nd] = (root / f"run{nd}d/model.pt", root / f"data{nd}d")
    finally:
        torch.set_num_threads(threads)
    return found


# === Data loss ===========================================================================================
def test_dataset_output_names_never_collide_in_a_folder(tmp_path, capsys):
    """Data loss: cases `a` and `a_drdm000` with --copy-originals must not write images/a_drdm000 twice."""
    data = tmp_path / "data"
    volume(data / "a.nii.gz", seed=1)
    volume(data / "a_drdm000.nii.gz", seed=2)
    out = tmp_path / "out"
    code, err = cli(capsys, "augment", data, "--out", out, "--copy-originals", *FAST)
    if code == 2:  # refused: one line naming both cases
        one_error(code, err, "a_drdm000")
        return
    assert code == 0, err
    listed = manifest_paths(out)
    assert len(listed) == len(set(listed)), f"the manifest lists one file for two outputs: {sorted(listed)}"
    images = sorted(p.name for p in (out / "images").iterdir())
    assert len(images) == len([p for p in listed if p.startswith("images/")]), images


def test_nnunet_output_names_never_collide(tmp_path, capsys):
    """Data loss: nnU-Net cases `a` and `a_drdm000`: numTraining must equal the label files written."""
    data = nnunet(tmp_path / "Dataset001_X", ["a", "a_drdm000"])
    out = tmp_path / "out"
    code, err = cli(capsys, "augment", data, "--out", out, "--copy-originals", *FAST)
    if code == 2:
        one_error(code, err, "a_drdm000")
        return
    assert code == 0, err
    labels = sorted(p.name for p in (out / "labelsTr").iterdir())
    images = sorted(p.name for p in (out / "imagesTr").iterdir())
    number = json.loads((out / "dataset.json").read_text())["numTraining"]
    assert number == len(labels) == len(images), (number, labels, images)
    listed = manifest_paths(out)
    assert len(listed) == len(set(listed)), sorted(listed)


# === Wrong results =======================================================================================
@pytest.mark.parametrize("layout", ["folder", "nnunet"])
def test_one_slice_volumes_stay_3d_in_dataset_mode(tmp_path, capsys, layout):
    """Wrong results: a one-slice (X, Y, 1) NIfTI in dataset mode must come out 3D with its full geometry."""
    geometry = {"spacing": (0.8, 0.9, 2.5), "origin": (10.0, -20.0, 35.0), "direction": rotation(0.3, -0.2, 0.5)}
    if layout == "folder":
        data = tmp_path / "data"
        volume(data / "s.nii.gz", (1, 16, 16), **geometry)
        written = "images/s_drdm000.nii.gz"
    else:
        data = nnunet(tmp_path / "Dataset002_Slice", ["s"], shape=(1, 16, 16), **geometry)
        written = "imagesTr/s_drdm000_0000.nii.gz"
    code, err = cli(capsys, "augment", data, "--out", tmp_path / "out", *FAST)
    assert code == 0, err
    source = sitk.ReadImage(str(next((data if layout == "folder" else data / "imagesTr").glob("s*.nii.gz"))))
    out = sitk.ReadImage(str(tmp_path / "out" / written))
    assert out.GetDimension() == 3 and out.GetSize() == (16, 16, 1), out.GetSize()
    assert np.allclose(out.GetOrigin(), source.GetOrigin(), atol=1e-4)
    assert np.allclose(out.GetSpacing(), source.GetSpacing(), atol=1e-5)
    assert np.allclose(out.GetDirection(), source.GetDirection(), atol=1e-5)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_with_nan_voxels_is_refused(tmp_path, capsys, suffix):
    """Wrong results: a NIfTI holding NaN voxels must be refused (ITK's reader turns NaN into 0)."""
    array = np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32)
    array[2, 3, 4] = np.nan
    path = tmp_path / f"nan{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    code, err = cli(capsys, "augment", path, "--out", tmp_path / "out", *FAST)
    one_error(code, err, "NaN")
    assert not (tmp_path / "out").exists()


def _monai_input():
    pytest.importorskip("monai")
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.normal(size=(1, 16, 16, 8)).astype(np.float32))
    label = torch.zeros((1, 16, 16, 8), dtype=torch.uint8)
    label[0, 4:12, 4:12, 2:6] = 1
    return image, label


def test_monai_transform_raises_key_error_for_a_missing_label_key():
    """Wrong results: RandDRDMd(label_keys="labels") on a dict with key `label` must raise KeyError."""
    image, label = _monai_input()
    from drdm_engine.transforms.monai import RandDRDMd

    transform = RandDRDMd(keys="image", label_keys="labels", size=16, depth=30)
    transform.set_random_state(0)
    with pytest.raises(KeyError):
        out = transform({"image": image, "label": label})
        moved = not torch.equal(out["image"], image)
        pytest.fail(f"no KeyError: image deformed={moved}, label deformed={not torch.equal(out['label'], label)}")


def test_monai_transform_allow_missing_keys_returns_the_dict_unchanged():
    """Wrong results: RandDRDMd(allow_missing_keys=True) with none of its keys present returns the dict."""
    pytest.importorskip("monai")
    from drdm_engine.transforms.monai import RandDRDMd

    transform = RandDRDMd(keys="image", label_keys="label", size=16, depth=30, allow_missing_keys=True)
    transform.set_random_state(0)
    data = {"other": torch.ones(3)}
    out = transform(data)
    assert set(out) == {"other"} and torch.equal(out["other"], data["other"])


def _published_state(model: Path) -> dict:
    """The bare published RecResACNet state dict of one of our checkpoints (what import-checkpoint reads)."""
    return torch.load(model, map_location="cpu", weights_only=True)["state_dict"]


def _forty_steps(state: dict) -> dict:
    return {**state, "time_embed.weight": state["time_embed.weight"][:40].clone()}


def _two_channels(state: dict) -> dict:
    """The same network with 2 input channels (the published layout: te1 maps the time embedding to the
    input channels, b1.0.conv0 reads them)."""
    state = dict(state)
    state["te1.0.weight"] = state["te1.0.weight"].repeat(2, 1)
    state["te1.0.bias"] = state["te1.0.bias"].repeat(2)
    state["te1.2.weight"] = torch.eye(2) * state["te1.2.weight"][0, 0]
    state["te1.2.bias"] = state["te1.2.bias"].repeat(2)
    state["b1.0.conv0.weight"] = state["b1.0.conv0.weight"].repeat(1, 2, 1, 1) / 2
    return state


@pytest.mark.parametrize("change, extra", [(_forty_steps, ["--batch-size", "1", "--seed", "0"]),
                                           (_two_channels, [])], ids=["timesteps40", "channels2"])
def test_fine_tune_from_another_architecture_is_refused_or_loads(models, tmp_path, capsys, change, extra,
                                                                 one_thread):
    """Wrong results: `drdm train --fine-tune` from a 40-step or 2-channel model: refuse, or a model.pt that loads."""
    model, data = models[2]
    torch.save(change(_published_state(model)), tmp_path / "source.pth")
    code, err = cli(capsys, "import-checkpoint", tmp_path / "source.pth", tmp_path / "source.pt", "--size", "16")
    assert code == 0, err
    code, err = cli(capsys, *train_args(data, tmp_path / "run", "--fine-tune", tmp_path / "source.pt", *extra))
    if code == 2:
        one_error(code, err)
        return
    assert code == 0, err
    code, err = cli(capsys, "info", "--model", tmp_path / "run/model.pt")
    assert code == 0, f"drdm train exited 0 but its model.pt does not load: {err.strip()}"


def test_workers_give_the_same_manifest_figures(tmp_path):
    """Wrong results: --workers 2 must give the manifest figures of --workers 1 (float64 accumulation)."""
    data = tmp_path / "data"
    for n, shape in enumerate([(20, 70, 66), (17, 61, 67)]):  # sizes whose float32 mean depends on the threads
        volume(data / f"c{n}.nii.gz", shape, seed=n)
    # the same environment for both runs; one worker runs in the main process with twice the threads each of
    # two workers gets (cpu_count // 2): the figures must not depend on that
    env = {**ENV, "OMP_NUM_THREADS": str(2 * max(1, (os.cpu_count() or 1) // 2))}
    cases = {}
    for workers in (1, 2):
        done = drdm("augment", data, "--out", tmp_path / f"w{workers}", "--workers", workers, "--samples", "2",
                    "--model", "none", "--size", "16", "--progress-lines", env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        cases[workers] = json.loads((tmp_path / f"w{workers}" / MANIFEST).read_text())["cases"]
    differ = [(c1["id"], k, s1["metrics"][k], s2["metrics"][k])
              for c1, c2 in zip(cases[1], cases[2]) for s1, s2 in zip(c1["samples"], c2["samples"])
              for k in s1["metrics"] if s1["metrics"][k] != s2["metrics"][k]]
    assert not differ, differ


# === Tracebacks instead of one line ======================================================================
@pytest.mark.parametrize("workers", [1, 2])
def test_case_names_too_long_for_the_file_system_are_one_line(tmp_path, workers):
    """Tracebacks: dataset case names too long for the file system (OSError: File name too long)."""
    data = tmp_path / "data"
    for n, letter in enumerate("ab"):
        volume(data / (letter * 245 + ".nii.gz"), seed=n)  # 252 characters: the outputs' names exceed 255
    done = drdm("augment", data, "--out", tmp_path / "out", "--workers", workers, *FAST)
    one_error(done.returncode, done.stderr)


def test_dataset_case_needing_more_memory_than_there_is_is_one_line(tmp_path):
    """Tracebacks: dataset mode without the memory guard, a case needing more memory than there is."""
    data = tmp_path / "data"
    volume(data / "a.nii.gz")
    volume(data / "b.nii.gz", seed=1)
    # --size 1024: the working-grid fields need ~37 GiB (the single-image run's guard refuses it from the
    # headers); the address-space limit makes a run without the guard fail fast instead of swapping
    done = drdm("augment", data, "--out", tmp_path / "out", "--model", "none", "--size", "1024", "--samples", "1",
                "--device", "cpu", memory_gib=6)
    line = one_error(done.returncode, done.stderr)
    assert "memory" in line, line


def _gzip_member(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def test_dataset_decompression_bomb_is_one_line(tmp_path):
    """Tracebacks: dataset mode, a decompression bomb (a 1600^3 header, 4 MB of gzip) -> MemoryError."""
    side, block = 1600, 64 << 20
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "bomb.nrrd", "wb") as handle:
        handle.write(f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {side} {side} {side}\nspacings: 1 1 1\n"
                     f"encoding: gzip\n\n".encode())
        zeros, left = _gzip_member(bytes(block)), side ** 3 - 4096
        while left >= block:
            handle.write(zeros)
            left -= block
        handle.write(_gzip_member(bytes(left)) + _gzip_member(np.arange(4096).astype(np.uint8).tobytes()))
    assert (data / "bomb.nrrd").stat().st_size < 8 << 20
    done = drdm("augment", data, "--out", tmp_path / "out", *FAST, "--device", "cpu", memory_gib=6)
    line = one_error(done.returncode, done.stderr)
    assert "memory" in line, line


@pytest.mark.parametrize("force", [False, True], ids=["guard", "force-large"])
def test_dataset_full_disk_is_one_line_and_keeps_foreign_files(tmp_path, capsys, force):
    """Tracebacks: dataset mode on a full disk (OSError: No space left on device); foreign files stay."""
    data = tmp_path / "data"
    data.mkdir()
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(40, 64, 64)).astype(np.float32))
    sitk.WriteImage(image, str(data / "big.nrrd"))
    disk = small_file_system(tmp_path / "disk", 2)
    try:
        out = disk / "o"
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        code, err = cli(capsys, "augment", data, "--out", out, "--overwrite", "--samples", "2", "--model", "none",
                        "--size", "16", *(["--force-large"] if force else []))
        line = one_error(code, err)
        if force:
            assert "No space left on device" in line, line
        assert (out / "keep.txt").read_text() == "mine"
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_train_at_a_huge_size_is_refused_by_the_memory_guard(models, tmp_path):
    """Tracebacks: `drdm train --size 4096` (3D) -> allocation error instead of the memory guard's line."""
    _, data = models[3]
    done = drdm(*train_args(data, tmp_path / "run", "--size", "4096"), memory_gib=6)
    line = one_error(done.returncode, done.stderr)
    assert "memory" in line, line
    assert not (tmp_path / "run" / "model.pt").exists()


def test_evaluate_at_a_huge_size_is_refused_by_a_memory_guard(models, tmp_path):
    """Tracebacks: `drdm evaluate` at a huge size -> allocation error (evaluate has no memory guard)."""
    model, data = models[3]
    done = drdm("evaluate", "--model", model, data, "--size", "4096", "--samples", "1", "--buckets", "1",
                "--device", "cpu", memory_gib=6)
    line = one_error(done.returncode, done.stderr)
    assert "memory" in line, line


def test_nnunet_dataset_json_that_is_a_list_is_one_line(tmp_path, capsys):
    """Tracebacks: an nnU-Net dataset.json that is a JSON list (AttributeError)."""
    data = nnunet(tmp_path / "Dataset003_List", ["a"])
    (data / "dataset.json").write_text("[1, 2]")
    code, err = cli(capsys, "augment", data, "--out", tmp_path / "out", *FAST)
    one_error(code, err, "dataset.json")


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_list_file_that_lists_itself_is_one_line(models, tmp_path, capsys, command):
    """Tracebacks: a .txt list file that lists itself (RecursionError)."""
    listing = tmp_path / "self.txt"
    listing.write_text("# this list names itself\nself.txt\n")
    if command == "train":
        argv = train_args(listing, tmp_path / "run")
    else:
        argv = ["evaluate", "--model", models[3][0], listing, "--samples", "1", "--buckets", "1", "--device", "cpu"]
    code, err = cli(capsys, *argv)
    one_error(code, err, "self.txt")


def test_a_volume_cache_with_fewer_names_than_volumes_is_one_line(tmp_path, capsys):
    """Tracebacks: a volume cache whose metadata lists fewer entries than its tensor (IndexError)."""
    from drdm_engine.training.data import save_cache  # the only way to build a cache file

    volumes = torch.rand(3, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    save_cache(tmp_path / "full.pt", volumes, ["v0", "v1", "v2"], ["s0", "s1", "s2"], [False, False, True], [])
    payload = torch.load(tmp_path / "full.pt", weights_only=True)
    for key in ("names", "subjects", "held_out"):
        payload[key] = payload[key][:2]
    torch.save(payload, tmp_path / "cache.pt")
    code, err = cli(capsys, *train_args(tmp_path / "cache.pt", tmp_path / "run"))
    one_error(code, err, "cache.pt")


# === Refused when it should work, or accepted when it should be refused ==================================
def test_csv_list_with_a_byte_order_mark_is_read(tmp_path, capsys):
    """Refused/accepted: a CSV saved by Excel as "CSV UTF-8" (byte-order mark) must be read."""
    image = volume(tmp_path / "c.nii.gz")
    label_map(tmp_path / "c_seg.nii.gz", image)
    (tmp_path / "cases.csv").write_text("image,labels\nc.nii.gz,c_seg.nii.gz\n", encoding="utf-8-sig")
    code, err = cli(capsys, "augment", tmp_path / "cases.csv", "--out", tmp_path / "out", *FAST)
    assert code == 0, err
    assert (tmp_path / "out/images/c_drdm000.nii.gz").is_file() and (tmp_path / "out/labels/c_drdm000.nii.gz").is_file()


@pytest.mark.parametrize("seed", ["-1", str(2 ** 64)])
def test_dataset_mode_checks_the_seed_like_a_single_image(tmp_path, capsys, seed):
    """Refused/accepted: dataset mode accepts --seed -1 (and 2**64); the single-image run refuses them."""
    data = tmp_path / "data"
    volume(data / "a.nii.gz")
    code, err = cli(capsys, "augment", data / "a.nii.gz", "--out", tmp_path / "single", f"--seed={seed}", *FAST)
    one_error(code, err, "--seed must be")
    code, err = cli(capsys, "augment", data, "--out", tmp_path / "out", f"--seed={seed}", *FAST)
    one_error(code, err, "--seed must be")
    assert not (tmp_path / "out" / MANIFEST).exists()


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_a_refused_dataset_run_does_not_block_the_corrected_one(tmp_path, capsys, overwrite):
    """Refused/accepted: after a run refused for a bad --depth, the corrected command must run."""
    data = tmp_path / "data"
    volume(data / "a.nii.gz")
    out = tmp_path / "out"
    code, err = cli(capsys, "augment", data, "--out", out, "--depth", "80", *FAST)
    one_error(code, err, "--depth")
    code, err = cli(capsys, "augment", data, "--out", out, "--depth", "40", *FAST,
                    *(["--overwrite"] if overwrite else []))
    assert code == 0, err
    assert (out / MANIFEST).is_file()


@pytest.mark.parametrize("argv", [["augment", "IMAGE", "--samples", "abc", "--out", "OUT"],
                                  ["augment", "IMAGE", "--out", "OUT", "--no-such-option"],
                                  ["train", "--data", "IMAGE", "--nproc", "abc"],
                                  ["evaluate", "--model", "m.pt"]],
                         ids=["augment-bad-int", "augment-unknown", "train-bad-int", "evaluate-no-data"])
def test_argparse_errors_say_drdm_error(tmp_path, capsys, argv):
    """Wording: argparse's own errors say `drdm augment: error:`; every error must say `drdm: error:`."""
    image = volume(tmp_path / "a.nii.gz")
    argv = [str(image) if a == "IMAGE" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    code, err = cli(capsys, *argv)
    assert not re.search(r"^drdm \S+: error:", err, re.MULTILINE), err
    one_error(code, err)


def test_a_case_error_names_the_case_once(tmp_path, capsys):
    """Wording: "case b: case b:" doubled (a channel of case b off the grid of its first channel)."""
    data = nnunet(tmp_path / "Dataset004_Grid", ["a", "b"], channels=2)
    moved = sitk.ReadImage(str(data / "imagesTr/b_0001.nii.gz"))
    moved.SetOrigin(tuple(o + 7 for o in moved.GetOrigin()))
    sitk.WriteImage(moved, str(data / "imagesTr/b_0001.nii.gz"))
    code, err = cli(capsys, "augment", data, "--out", tmp_path / "out", *FAST)
    line = one_error(code, err, "case b")
    assert line.count("case b") == 1, line


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _spawned_worker(pid: int, deadline: float) -> int | None:
    """A ``multiprocessing`` spawn worker of process ``pid`` (not its resource tracker), once it exists."""
    while time.monotonic() < deadline:
        for child in _children(pid):
            try:
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return child
            except OSError:
                continue
        time.sleep(0.05)
    return None


def test_a_killed_worker_says_finished_cases_are_kept_once(tmp_path):
    """Wording: "finished cases are kept" said twice after a --workers process is killed."""
    data = tmp_path / "data"
    for n in range(4):
        volume(data / f"c{n}.nii.gz", (16, 32, 32), seed=n)
    command = [sys.executable, "-m", "drdm_engine", "augment", str(data), "--out", str(tmp_path / "out"), "--workers",
               "2", "--samples", "2", "--model", "none", "--size", "32", "--progress-lines"]
    run = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        worker = _spawned_worker(run.pid, time.monotonic() + 60)
        assert worker is not None, "no worker process appeared"
        os.kill(worker, signal.SIGKILL)
        _, err = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    line = one_error(run.returncode, err)
    assert line.count("finished cases are kept") == 1, line


def test_dataset_mode_exits_143_on_sigterm_like_a_single_image(tmp_path):
    """Wording: dataset mode exits 130 on SIGTERM where a single image exits 143 (128 + SIGTERM)."""
    data = tmp_path / "data"
    for n in range(3):
        volume(data / f"c{n}.nii.gz", (16, 32, 32), seed=n)
    command = [sys.executable, "-m", "drdm_engine", "augment", str(data), "--out", str(tmp_path / "out"),
               "--samples", "2", "--model", "none", "--size", "32", "--progress-lines"]
    run = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in run.stdout:
            if line.startswith("drdm-progress"):
                run.send_signal(signal.SIGSTOP)  # paused at its first sample: the test does not race the run
                break
        else:
            pytest.fail(f"the run ended before its first sample: {run.stderr.read()}")
        run.send_signal(signal.SIGTERM)
        run.send_signal(signal.SIGCONT)
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert "Traceback" not in err, err
    assert run.returncode == 128 + signal.SIGTERM, (run.returncode, err)


def test_the_disk_guard_does_not_say_zero_gib_for_small_runs(tmp_path, capsys):
    """Wording: the disk guard says "about 0.0 GiB … has 0.0 GiB free" for small runs."""
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(40, 64, 64)).astype(np.float32))
    sitk.WriteImage(image, str(tmp_path / "big.nrrd"))
    disk = small_file_system(tmp_path / "disk", 2)
    try:
        code, err = cli(capsys, "augment", tmp_path / "big.nrrd", "--out", disk / "o", "--samples", "2", "--model",
                        "none", "--size", "16")
        line = one_error(code, err)
        assert "0.0 GiB" not in line and not re.search(r"(?<![\d.])0(\.0+)? [KMG]i?B", line), line
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_evaluate_does_not_call_its_inputs_training_data(models, tmp_path, capsys):
    """Wording: `evaluate` calls its inputs "training data" (a folder mixing 2D and 3D volumes)."""
    mixed = tmp_path / "mixed"
    volume(mixed / "v2.nrrd", (12, 10))
    volume(mixed / "v3.nrrd", (8, 12, 10))
    code, err = cli(capsys, "evaluate", "--model", models[3][0], mixed, "--samples", "1", "--buckets", "1",
                    "--device", "cpu")
    line = one_error(code, err, "2D", "3D")
    assert "training" not in line, line


# === Further cases (not in the issue) ====================================================================
def test_extra_csv_list_with_a_short_row_is_one_line(tmp_path, capsys):
    """Extra (lists): a CSV row with fewer cells than the header (AttributeError on None.strip())."""
    volume(tmp_path / "c.nii.gz")
    (tmp_path / "cases.csv").write_text("image,labels,case\nc.nii.gz\n")
    code, err = cli(capsys, "augment", tmp_path / "cases.csv", "--out", tmp_path / "out", *FAST)
    if code == 0:  # a missing optional cell read as empty is fine too
        assert (tmp_path / "out/images/c_drdm000.nii.gz").is_file()
        return
    one_error(code, err)


@pytest.mark.parametrize("suffix", [".csv", ".txt"])
def test_extra_list_file_that_is_not_utf8_is_one_line(tmp_path, capsys, suffix):
    """Extra (lists): a list file in Latin-1 (an accented file name) -> UnicodeDecodeError."""
    volume(tmp_path / "café.nii.gz")
    text = ("image\n" if suffix == ".csv" else "") + "café.nii.gz\n"
    (tmp_path / f"cases{suffix}").write_bytes(text.encode("latin-1"))
    code, err = cli(capsys, "augment", tmp_path / f"cases{suffix}", "--out", tmp_path / "out", *FAST)
    if code == 0:  # read with a fallback encoding is fine too
        assert (tmp_path / "out/images/café_drdm000.nii.gz").is_file()
        return
    one_error(code, err, f"cases{suffix}")


def test_extra_nnunet_file_ending_that_is_not_text_is_one_line(tmp_path, capsys):
    """Extra (nnU-Net): dataset.json with a numeric file_ending (TypeError in re.escape)."""
    data = nnunet(tmp_path / "Dataset005_Ending", ["a"])
    meta = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**meta, "file_ending": 5}))
    code, err = cli(capsys, "augment", data, "--out", tmp_path / "out", *FAST)
    one_error(code, err, "file_ending")


def test_extra_pairs_of_a_single_image_check_the_seed(tmp_path, capsys):
    """Extra (--pairs): one image with --pairs takes the dataset path and accepts --seed -1."""
    image = volume(tmp_path / "a.nii.gz")
    code, err = cli(capsys, "augment", image, "--pairs", "--out", tmp_path / "out", "--seed=-1", "--model", "none",
                    "--size", "16", "--samples", "2")
    one_error(code, err, "--seed must be")


def test_extra_evaluate_does_not_suggest_model_none(models, tmp_path, capsys):
    """Extra (evaluate): a 3D model on 2D volumes suggests `--model none`, which evaluate cannot take."""
    flat = tmp_path / "flat"
    volume(flat / "v.nrrd", (12, 10))
    code, err = cli(capsys, "evaluate", "--model", models[3][0], flat, "--samples", "1", "--buckets", "1",
                    "--device", "cpu")
    line = one_error(code, err, "3D", "2D")
    assert "--model none" not in line, line


def test_extra_import_checkpoint_unwritable_output_is_a_plain_reason(models, tmp_path, capsys):
    """Extra (import-checkpoint): an output that cannot be written shows torch's C++ assertion text."""
    torch.save(_published_state(models[2][0]), tmp_path / "m.pth")
    code, err = cli(capsys, "import-checkpoint", tmp_path / "m.pth", "/proc/drdm.pt", "--size", "16")
    line = one_error(code, err, "/proc/drdm.pt")
    assert "enforce fail" not in line and "inline_container" not in line, line
