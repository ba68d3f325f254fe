"""Loading models is safe: no code in a file runs, corrupt files and metadata are one-line errors (issue 9).

Every command that loads a checkpoint is run on a file whose unpickling would create a marker file
(a ``__reduce__`` payload): each must exit 2 with one ``drdm: error:`` line and leave no marker.
"""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import one_error_line, refused, run_cli, run_drdm
from training_fixtures import write_phantoms

from drdm_engine.model.checkpoint import FORMAT, ModelMeta, load_checkpoint, save_checkpoint
from drdm_engine.model.network import RecResACNet


class CodeRunning:
    """Unpickling this object calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def our_payload(ndims: int = 2, size: int = 16) -> dict:
    """The dict our checkpoint files hold (weights of a fresh network and its metadata)."""
    net = RecResACNet(ndims)
    return {"format": FORMAT, "format_version": 1, "meta": asdict(ModelMeta(ndims=ndims, size=size)),
            "state_dict": net.state_dict()}


@pytest.fixture
def files(tmp_path):
    """Code-running files in each shape a command reads, a 2D image and a folder of 2D volumes."""
    marker = tmp_path / "marker"
    ours = our_payload()
    ours["meta"]["notes"] = {"hidden": CodeRunning(marker)}
    torch.save(ours, tmp_path / "evil.pt")
    resume = our_payload()
    resume["training"] = {"step": 1, "optimizer": CodeRunning(marker)}
    torch.save(resume, tmp_path / "evil_resume.pt")
    bare = RecResACNet(2).state_dict()
    bare["extra"] = CodeRunning(marker)
    torch.save(bare, tmp_path / "evil.pth")
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32))
    sitk.WriteImage(image, str(tmp_path / "image.nrrd"))
    write_phantoms(tmp_path / "data", (12, 10), 1, ".nrrd")
    return tmp_path, marker


def test_the_payload_runs_code_when_unpickled_without_weights_only(files):
    root, marker = files
    for name in ("evil.pt", "evil_resume.pt", "evil.pth"):
        torch.load(root / name, weights_only=False)
        assert marker.exists(), name
        marker.unlink()


COMMANDS = {
    "augment --model": ["augment", "{root}/image.nrrd", "--model", "{root}/evil.pt", "--out", "{root}/out"],
    "info": ["info", "--model", "{root}/evil.pt"],
    "import-checkpoint": ["import-checkpoint", "{root}/evil.pth", "{root}/out.pt", "--size", "16"],
    "train --fine-tune": ["train", "--data", "{root}/data", "--size", "16", "--steps", "1", "--out", "{root}/run",
                          "--no-progress", "--device", "cpu", "--fine-tune", "{root}/evil.pth"],
    "train --resume": ["train", "--data", "{root}/data", "--size", "16", "--steps", "2", "--out", "{root}/run",
                       "--no-progress", "--device", "cpu", "--resume", "{root}/evil_resume.pt"],
    "evaluate": ["evaluate", "--model", "{root}/evil.pt", "{root}/data", "--samples", "1", "--buckets", "1"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_command_runs_code_from_a_checkpoint(files, capsys, command):
    root, marker = files
    refused(capsys, *[a.format(root=root) for a in COMMANDS[command]], says="refused to load")
    assert not marker.exists()
    assert not (root / "out").exists() and not (root / "out.pt").exists()
    assert not list(root.glob("run/*.pt"))


@pytest.mark.slow
def test_refusal_through_the_installed_entry_point(files):
    """A real process: exit code 2 and a stderr of exactly one line (no torch warnings), for our format
    and for a plain pickle file."""
    root, marker = files
    with (root / "plain.pkl").open("wb") as handle:
        pickle.dump(CodeRunning(marker), handle)
    for name, fragment in (("evil.pt", "refused to load"), ("plain.pkl", "cannot read model file")):
        done = run_drdm("info", "--model", root / name)
        line = one_error_line(done.returncode, done.stderr, fragment)
        assert [text for text in done.stderr.splitlines() if text.strip()] == [line], done.stderr
        assert ("io.open" in line) == (name == "evil.pt")
    assert not marker.exists()


@pytest.mark.slow
def test_checkpoints_written_by_this_project_still_load(tmp_path):
    """Plain payloads (ours, with the trainer's training state; also torch's legacy non-zip format) load."""
    net = RecResACNet(2)
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.zeros(1, 1, 16, 16), torch.zeros(1, dtype=torch.long)).sum().backward()
    optimizer.step()
    training = {"step": 3, "optimizer": optimizer.state_dict(), "scaler": None, "weights_digest_per_rank": ["a"],
                "rng": [{"sample": torch.Generator().get_state(), "field": torch.Generator().get_state(),
                         "torch": torch.get_rng_state()}], "config": {"lr": 1e-4, "data": ["x"], "amplitude": None}}
    save_checkpoint(tmp_path / "c.pt", net, ModelMeta(ndims=2, size=16, notes={"steps": 3}), training=training)
    loaded, state = load_checkpoint(tmp_path / "c.pt", ndims=2, with_training=True)
    saved = optimizer.state_dict()["state"]
    assert state["step"] == 3 and saved and all(torch.equal(state["optimizer"]["state"][k]["exp_avg"], v["exp_avg"])
                                                for k, v in saved.items())
    torch.save(our_payload(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert load_checkpoint(tmp_path / "legacy.pt").meta.size == 16


def _corrupt(change) -> dict:
    payload = our_payload()
    change(payload)
    return payload


def _zip_with_wrong_content(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"not a pickle")


CORRUPT = {
    "unknown meta key": (_corrupt(lambda p: p["meta"].update(colour="red")), "unknown metadata key"),
    "size 3": (_corrupt(lambda p: p["meta"].update(size=3)), "multiple of 8"),
    "size 0": (_corrupt(lambda p: p["meta"].update(size=0)), "multiple of 8"),
    "huge size": (_corrupt(lambda p: p["meta"].update(size=2 ** 40)), "multiple of 8 from 8 to 4096"),
    "no meta": (_corrupt(lambda p: p.pop("meta")), "no meta"),
    "meta a list": (_corrupt(lambda p: p.update(meta=[1, 2])), "not a mapping"),
    "meta lacks size": (_corrupt(lambda p: p["meta"].pop("size")), "lacks size"),
    "size a string": (_corrupt(lambda p: p["meta"].update(size="64")), "metadata size is str"),
    "ndims a float": (_corrupt(lambda p: p["meta"].update(ndims=2.0)), "metadata ndims is float"),
    "ndims 4": (_corrupt(lambda p: p["meta"].update(ndims=4)), "ndims must be 2 or 3"),
    "size a bool": (_corrupt(lambda p: p["meta"].update(size=True)), "metadata size is bool"),
    "v_scale nan": (_corrupt(lambda p: p["meta"].update(v_scale=float("nan"))), "v_scale must be a finite"),
    "amplitude -1": (_corrupt(lambda p: p["meta"].update(amplitude=-1.0)), "amplitude must be a finite positive"),
    "rec_num huge": (_corrupt(lambda p: p["meta"].update(rec_num=10 ** 9)), "rec_num must be an integer"),
    "control_size 4": (_corrupt(lambda p: p["meta"].update(control_size=4)), "control_size"),
    "padding": (_corrupt(lambda p: p["meta"].update(compose_padding="reflect")), "compose_padding"),
    "notes a list": (_corrupt(lambda p: p["meta"].update(notes=[])), "metadata notes is list"),
    "timesteps not the weights'": (_corrupt(lambda p: p["meta"].update(timesteps=10 ** 5)),
                                   "does not match its weights"),
    "3D meta on 2D weights": (_corrupt(lambda p: p["meta"].update(ndims=3)), "does not match its weights"),
    "format_version a string": (_corrupt(lambda p: p.update(format_version="1")), "format_version"),
    "no format_version": (_corrupt(lambda p: p.pop("format_version")), "format_version"),
    "newer format": (_corrupt(lambda p: p.update(format_version=7)), "newer drdm"),
    "unknown entry": (_corrupt(lambda p: p.update(extra=1)), "unknown entries extra"),
    "no state_dict": (_corrupt(lambda p: p.pop("state_dict")), "no meta or state_dict"),
    "state_dict a list": (_corrupt(lambda p: p.update(state_dict=[1])), "does not hold a state dict"),
    "weight a number": (_corrupt(lambda p: p["state_dict"].update({"conv_out.bias": 1.0})),
                        "does not hold a state dict"),
    "NaN weights": (_corrupt(lambda p: p["state_dict"]["conv_out.bias"].fill_(float("nan"))), "NaN"),
    "missing weight": (_corrupt(lambda p: p["state_dict"].pop("conv_out.bias")), "does not fit"),
    "sparse weight": (_corrupt(lambda p: p["state_dict"].update({"conv_out.bias": torch.ones(2).to_sparse()})),
                      "weights must be dense floating-point"),
    "meta weight": (_corrupt(lambda p: p["state_dict"].update({"conv_out.bias": torch.empty(2, device="meta")})),
                    "weights must be dense floating-point"),
    "complex weight": (_corrupt(lambda p: p["state_dict"].update({"conv_out.bias": torch.zeros(2) * 1j})),
                       "weights must be dense floating-point"),
    "integer weight": (_corrupt(lambda p: p["state_dict"].update({"conv_out.bias": torch.zeros(2).long()})),
                       "weights must be dense floating-point"),
    "time table 1D": (_corrupt(lambda p: p["state_dict"].update({"time_embed.weight": torch.zeros(80)})),
                      "time_embed.weight 1"),
    "a list": ([1, 2, 3], "not a DRDM checkpoint"),
    "a tensor": (torch.zeros(3), "not a DRDM checkpoint"),
    "a string": ("drdm-checkpoint", "not a DRDM checkpoint"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_checkpoints_are_one_line_errors(tmp_path, capsys, case):
    payload, fragment = CORRUPT[case]
    torch.save(payload, tmp_path / "bad.pt")
    refused(capsys, "info", "--model", tmp_path / "bad.pt", says=fragment)


def test_files_that_are_not_checkpoints(tmp_path, capsys):
    _zip_with_wrong_content(tmp_path / "zip.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("hello")
    for name in ("zip.pt", "empty.pt", "text.pt"):
        refused(capsys, "info", "--model", tmp_path / name, says="not a PyTorch checkpoint")


def test_a_folder_given_as_model_is_named_as_a_folder(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    torch.save(our_payload(), run / "model.pt")
    refused(capsys, "info", "--model", run,
            says="is a folder, not a file; give the checkpoint file itself (it holds model.pt)")
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32))
    sitk.WriteImage(image, str(tmp_path / "image.nrrd"))
    refused(capsys, "augment", tmp_path / "image.nrrd", "--model", run, "--out", tmp_path / "o", says="is a folder")
    refused(capsys, "import-checkpoint", run, tmp_path / "x.pt", "--size", "16", says="is a folder")
    refused(capsys, "info", "--model", tmp_path / "absent.pt", says="not found")
    assert not (tmp_path / "o").exists() and not (tmp_path / "x.pt").exists()


@pytest.fixture
def published(tmp_path):
    torch.save(RecResACNet(2).state_dict(), tmp_path / "published.pth")
    return tmp_path / "published.pth"


@pytest.mark.parametrize("flags, fragment", [
    (["--size", "0"], "multiple of 8"), (["--size", "-8"], "multiple of 8"), (["--size", "12"], "multiple of 8"),
    (["--size", str(2 ** 40)], "multiple of 8 from 8 to 4096"),
    (["--size", "16", "--v-scale", "nan"], "v_scale must be a finite positive"),
    (["--size", "16", "--v-scale", "inf"], "v_scale must be a finite positive"),
    (["--size", "16", "--v-scale=-1e-5"], "v_scale must be a finite positive"),
    (["--size", "16", "--amplitude", "nan"], "amplitude must be a finite positive"),
    (["--size", "16", "--amplitude", "0"], "amplitude must be a finite positive"),
])
def test_import_checkpoint_refuses_impossible_metadata(tmp_path, capsys, published, flags, fragment):
    refused(capsys, "import-checkpoint", published, tmp_path / "out.pt", *flags, says=fragment)
    assert not (tmp_path / "out.pt").exists() and not list(tmp_path.glob(".*tmp*"))


def test_import_checkpoint_into_a_folder_or_under_a_file(tmp_path, capsys, published):
    folder = tmp_path / "folder"
    folder.mkdir()
    for extra in ([], ["--overwrite"]):
        refused(capsys, "import-checkpoint", published, folder, "--size", "16", *extra, says="is a folder")
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    refused(capsys, "import-checkpoint", published, blocker / "m.pt", "--size", "16", says="cannot write")
    assert blocker.read_text() == "keep me" and list(folder.iterdir()) == []
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    code, _ = run_cli(capsys, "import-checkpoint", published, tmp_path / "ok.pt", "--size", "16")
    assert code == 0 and load_checkpoint(tmp_path / "ok.pt").meta.size == 16


def test_device_files_and_control_characters(tmp_path, capsys):
    refused(capsys, "info", "--model", "/dev/zero", says="not a regular file")
    if Path("/proc/self/mem").is_file():  # Linux: a regular file whose first read fails
        refused(capsys, "info", "--model", "/proc/self/mem", says="/proc/self/mem: Input/output error")
    payload = our_payload()
    payload["meta"]["trained_on"] = "phantoms\ndrdm-progress 1.0 done"
    torch.save(payload, tmp_path / "spoof.pt")
    refused(capsys, "info", "--model", tmp_path / "spoof.pt", says="control characters")
    torch.save(RecResACNet(2).state_dict(), tmp_path / "published.pth")
    refused(capsys, "import-checkpoint", tmp_path / "published.pth", tmp_path / "out.pt", "--size", "16",
            "--trained-on", "x\ny", says="trained_on holds control characters")
    assert not (tmp_path / "out.pt").exists()


def test_code_in_other_pickle_formats_is_not_run(tmp_path, capsys):
    """torch's legacy (non-zip) format and a plain ``pickle`` file: refused, the payload never runs."""
    marker = tmp_path / "marker"
    torch.save({"format": FORMAT, "meta": CodeRunning(marker)}, tmp_path / "legacy.pt",
               _use_new_zipfile_serialization=False)
    with (tmp_path / "plain.pkl").open("wb") as handle:
        pickle.dump(CodeRunning(marker), handle)
    refused(capsys, "info", "--model", tmp_path / "legacy.pt", says="refused to load")
    refused(capsys, "info", "--model", tmp_path / "plain.pkl", says="cannot read model file")
    good = tmp_path / "good.pt"
    torch.save(our_payload(), good)
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    refused(capsys, "info", "--model", tmp_path / "truncated.pt", says="not a PyTorch checkpoint")
    assert not marker.exists()


def test_import_checkpoint_unwritable_output_is_a_plain_reason(tmp_path, capsys, published):
    """An output that cannot be written is named with a plain reason, not torch's C++ assertion text."""
    line = refused(capsys, "import-checkpoint", published, "/proc/drdm.pt", "--size", "16", says="/proc/drdm.pt")
    assert "enforce fail" not in line and "inline_container" not in line, line
