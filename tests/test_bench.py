"""The training-step benchmark's CPU path and the one-shot GPU check's CPU-safe parts (bench_train.py, gpu_check.py)."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dev_script(name):
    """A script of dev/ as a module, loaded from its file (dev/ is no package and is not put on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "dev", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model", ["tiny:llava_onevision", pytest.param("tiny:qwen2_5_vl", marks=pytest.mark.slow),
                                   pytest.param("tiny:mplug_owl2", marks=pytest.mark.slow)])
def test_training_step_benchmark_cpu_path(model, tmp_path):
    bench_train = dev_script("bench_train")
    out = tmp_path / "b.json"
    res = bench_train.main(["--model", model, "--steps", "2", "--warmup", "1", "--seq_len", "128", "--device", "cpu",
                            "--out", str(out)])["step"]
    assert res["steps_per_s"] > 0 and res["tokens_per_s"] == pytest.approx(128 * res["samples_per_s"])
    assert 0 < res["image_tokens"] < 128 and res["estimated_gib"] > 0 and res["trained_params"] < res["params"]
    assert json.load(open(out))["step"]["model"] == model


@pytest.mark.slow
def test_gpu_check_without_a_gpu_runs_the_cpu_parts_and_says_so(tmp_path, capsys):
    gpu_check = dev_script("gpu_check")
    os.chdir(ROOT)
    assert gpu_check.main(["--out", str(tmp_path), "--cpu_only", "true"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device here" in err and "Traceback" not in err
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| ours_inplace |" in md and "device: none" in md
