"""The extension as the Extensions Manager installs it: the layout comes from the CMake files themselves
(real ``cmake`` configuring the extension against the stand-in Slicer CMake package in
``Testing/slicer_module/slicer_cmake``, then ``cmake --install`` into a temporary prefix), and the module library and
the engine are imported and run from that layout only (``python -S``, a clean ``PYTHONPATH``), with the
repository and its editable install out of the way."""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
from conftest import ROOT

pytestmark = pytest.mark.slow  # real cmake configures and installs the extension

LIB_DIR = Path("lib") / "Slicer-5.10" / "qt-scripted-modules"
# Packages the engine and the module library import that Slicer itself ships (torch comes from the
# PyTorch extension); their folders are the only other entries on the clean PYTHONPATH.
THIRD_PARTY = ("torch", "numpy", "SimpleITK", "slicerio", "yaml", "tqdm", "PIL", "slicer", "vtk", "slicer_core")


def cmakeExecutable() -> str:
    beside = Path(sys.executable).with_name("cmake")
    found = str(beside) if beside.is_file() else shutil.which("cmake")
    if not found:
        pytest.skip("cmake is not installed (requirements-test.txt pins the cmake wheel)")
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """Configure the extension with the stand-in Slicer package and install it; the module folder."""
    cmake = cmakeExecutable()
    build, prefix = tmp_path_factory.mktemp("build"), tmp_path_factory.mktemp("prefix")
    run = lambda *args: subprocess.run([cmake, *args], capture_output=True, text=True, timeout=300)
    configured = run("-S", str(ROOT), "-B", str(build), f"-DSlicer_DIR={Path(__file__).with_name('slicer_cmake')}",
                     "-DBUILD_TESTING=OFF")
    assert configured.returncode == 0, configured.stdout + configured.stderr
    done = run("--install", str(build), "--prefix", str(prefix))
    assert done.returncode == 0, done.stdout + done.stderr
    return prefix / LIB_DIR


def sourceFiles(folder: Path) -> set[str]:
    return {str(p.relative_to(folder.parent)) for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def test_every_file_of_the_module_and_engine_packages_is_installed(installed):
    for package in (ROOT / "DRDMSlicer" / "DRDMSlicerLib", ROOT / "DRDMSlicer" / "Scripts", ROOT / "drdm_engine"):
        missing = sourceFiles(package) - sourceFiles(installed / package.name)
        assert not missing, f"not installed: {sorted(missing)}"
    for path in ("DRDMSlicer.py", "Resources/UI/DRDMSlicer.ui", "Resources/Icons/DRDMSlicer.png"):
        assert (installed / path).is_file(), path
    assert not list(installed.rglob("__pycache__"))


def cleanEnvironment(installed: Path) -> dict:
    folders = [str(installed)]
    for name in THIRD_PARTY:
        spec = importlib.util.find_spec(name)
        if spec is not None:
            folder = str(Path(spec.submodule_search_locations[0] if spec.submodule_search_locations
                              else spec.origin).parent)
            if folder not in folders:
                folders.append(folder)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join(folders)
    return env


IMPORT_CHECK = """
import importlib, pkgutil, sys
from pathlib import Path
installed = Path(sys.argv[1]).resolve()
import DRDMSlicerLib
from DRDMSlicerLib.worker import engineSearchPath
for info in pkgutil.iter_modules(DRDMSlicerLib.__path__):
    importlib.import_module("DRDMSlicerLib." + info.name)
assert Path(DRDMSlicerLib.__file__).resolve().parent.parent == installed, DRDMSlicerLib.__file__
assert Path(engineSearchPath()).resolve() == installed, engineSearchPath()
assert "torch" not in sys.modules
import drdm_engine.cli.commands
assert Path(drdm_engine.__file__).resolve().parent.parent == installed, drdm_engine.__file__
drdm_engine.cli.commands.build_parser()
print("ok")
"""


def test_installed_module_imports_and_runs_the_engine_without_the_source_tree(installed, tmp_path):
    env = cleanEnvironment(installed)
    checked = subprocess.run([sys.executable, "-S", "-c", IMPORT_CHECK, str(installed)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0 and checked.stdout.strip() == "ok", checked.stdout + checked.stderr
    image = sitk.GaussianSource(sitk.sitkFloat32, (12, 10, 8), sigma=(3, 3, 3), mean=(6, 5, 4), scale=1000)
    sitk.WriteImage(image, str(tmp_path / "in.nrrd"))
    out = tmp_path / "out"
    ran = subprocess.run([sys.executable, "-S", "-m", "drdm_engine", "augment", str(tmp_path / "in.nrrd"),
                          "--model", "none", "--samples", "1", "--depth", "2", "--size", "16", "--seed", "1",
                          "--device", "cpu", "--out", str(out), "--progress-lines"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert (out / "manifest.json").is_file()
    assert sitk.ReadImage(str(next(out.glob("*.nrrd")))).GetSize() == image.GetSize()
