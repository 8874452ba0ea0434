"""The repo's layout keeps every command working whatever else is installed: library code lives in the package
iqa_vlm/, and no name the repo puts on sys.path is also the import name of an installed distribution (a module of
ours named `kernels` once broke every command when transformers started importing Hugging Face's `kernels`).
Nothing in the repo points outside it.

    python -m pytest tests/test_layout.py -q
"""
import json
import os
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY_SCRIPTS = {"prepare_data", "train", "train_grpo", "evaluate", "analyze"}
# folders whose scripts are run as `python FOLDER/script.py`, which puts FOLDER first on sys.path; tests/ is put
# there by pytest
SCRIPT_FOLDERS = ["dev", "sweeps", "tests"]
# the top-level modules the repo had before the package: none may be importable from the repo root again
FORMER_TOP_LEVEL = ["kernels", "data", "model", "metrics", "common", "loader", "mplug_owl2", "tiny_models",
                    "memory_plan", "iqa_io", "iqa_datasets", "expert_iqa", "pairwise", "distortion", "two_stage",
                    "quality_token", "scoring", "deqa", "data_mix", "qbench", "prompting", "prompting_paper",
                    "prompting_table", "hard_samples", "demo_set", "iqa_vlm_ext"]


def names_on_sys_path():
    """{import name: where} for every module or regular package that running the repo's scripts or tests exposes."""
    names = {}
    for folder in [ROOT] + [ROOT / f for f in SCRIPT_FOLDERS]:
        for p in folder.iterdir():
            if p.suffix == ".py" or p.name.endswith(".so"):
                names[p.name.split(".")[0]] = str(p.relative_to(ROOT))
            elif p.is_dir() and (p / "__init__.py").is_file():
                names[p.name] = str(p.relative_to(ROOT)) + "/"
    names.pop("setup", None)  # setup.py is run by pip and setuptools, never imported
    names.pop("conftest", None)  # pytest imports it by path
    return names


def test_top_level_holds_only_the_entry_scripts_and_the_package():
    modules = {p.stem for p in ROOT.glob("*.py")}
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert modules == ENTRY_SCRIPTS | {"setup"}, f"library code belongs in iqa_vlm/, not at the top: {modules}"
    assert packages == {"iqa_vlm"}
    assert not list(ROOT.glob("*.so")), "the extension is built into the package (iqa_vlm/_C*.so)"


def test_no_name_on_sys_path_shadows_an_installed_distribution():
    installed = packages_distributions()
    names = names_on_sys_path()
    assert "iqa_vlm" in names and "train" in names and "test_layout" in names  # the scan sees what it should
    clashes = {n: (where, installed[n]) for n, where in names.items() if n in installed and n != "iqa_vlm"}
    assert not clashes, ("these names of the repo are also import names of installed distributions, so one of them "
                         f"shadows the other: {clashes}")


def test_former_top_level_names_import_nothing_of_the_repo():
    """`python -c "import kernels"` (and every other former module name) from the repo root finds no file of ours."""
    code = ("import importlib.util, json, sys\n"
            f"names = {FORMER_TOP_LEVEL!r}\n"
            "print(json.dumps({n: getattr(importlib.util.find_spec(n), 'origin', None) for n in names}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    ours = {n: origin for n, origin in found.items() if origin and str(ROOT) in os.path.abspath(origin)}
    assert not ours, f"importable from the repo root as top-level names: {ours}"


def test_the_op_is_public_api_and_the_package_imports_from_any_folder(tmp_path):
    code = ("import iqa_vlm, torch\n"
            "from iqa_vlm import level_cross_entropy, level_scores\n"
            "loss, probs = level_cross_entropy(torch.randn(3, 9), torch.tensor([1, 2, 3]), torch.tensor([1, 2, 3]))\n"
            "print(iqa_vlm.__file__, tuple(loss.shape), tuple(probs.shape), level_scores(probs).shape[0])")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    path, rest = r.stdout.split(" ", 1)
    assert Path(path).resolve() == ROOT / "iqa_vlm" / "__init__.py" and rest.split() == ["(3,)", "(3,", "3)", "3"]


def test_nothing_points_outside_the_repo():
    outside = "../" + "shared"  # spelt in two pieces so that this file does not match itself
    joined = "parent / " + '"shared"'  # the same path built with pathlib
    r = subprocess.run(["git", "grep", "-n", "-F", "-e", outside, "-e", joined, "--", ".", ":!.ci"], cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode not in (0, 1):  # not a git checkout (an sdist, a copied folder): scan the files instead
        hits = [str(p) for p in ROOT.rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".txt", ".cpp", ".h", ".cu")
                and ".ci" not in p.parts and any(x in p.read_text(errors="ignore") for x in (outside, joined))]
        assert not hits, hits
        return
    assert r.stdout == "", f"paths outside the repo (a user's clone has no {outside}):\n{r.stdout}"
