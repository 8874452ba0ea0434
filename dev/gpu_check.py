"""One-shot GPU check, unattended, in about 8 minutes: build the extension for this GPU, run the CUDA tests, benchmark
the op against eager PyTorch, torch.compile and Liger-Kernel, and the training step on the real-size presets that fit.
Writes OUT/gpu_check.md (paste into docs/benchmarks.md) and the JSON of every part.

    python dev/gpu_check.py --out out/gpu_check           # on a GPU machine (installs liger-kernel if it can)
    python dev/gpu_check.py --cpu_only true               # what runs without a GPU: the environment and the CPU op check

Each part has its own time limit and its failure is recorded, not fatal: one broken part leaves the others' results.
Without a CUDA device it runs the CPU-safe parts and exits with status 2 and a message saying what needs a GPU.
"""
import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repo root: iqa_vlm/ and the entry scripts
sys.path.insert(0, ROOT)
from iqa_vlm.common import atomic_write, atomic_write_json

PY = sys.executable
# the op at LLaVA-OV / Qwen2 vocabulary (bf16) and at a LLaMA-2 vocabulary with more rows (fp32)
OP_CASES = [("4096", "151936", "bf16"), ("16384", "32000", "fp32")]
# presets x settings for the training step (the GPU's memory decides which run)
TRAIN_CASES = [("llava-onevision-0.5b", "encoder,projector,llm", "4", "2048"),
               ("llava-onevision-7b", "encoder,projector", "2", "2048"),
               ("qwen2.5-vl-7b", "encoder,projector", "2", "2048"),
               ("mplug-owl2-7b", "encoder,projector", "2", "2048")]


def run(cmd, limit, env=None):
    """(return code, seconds, last 3000 characters of output) of one part; a timeout is code 124."""
    t0 = time.time()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env={**os.environ, **(env or {})})
        return r.returncode, time.time() - t0, (r.stdout + r.stderr)[-3000:]
    except subprocess.TimeoutExpired as e:
        return 124, time.time() - t0, (str(e.stdout or "") + str(e.stderr or ""))[-3000:]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/gpu_check")
    ap.add_argument("--cpu_only", default="false", choices=["true", "false"])
    ap.add_argument("--install_liger", default="true", choices=["true", "false"])
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    import torch
    gpu = torch.cuda.is_available() and args.cpu_only == "false"
    lines = ["# GPU check", "", f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- torch {torch.__version__}, CUDA {torch.version.cuda}, python {platform.python_version()}"]
    parts = {}

    def save():  # after every part: a run cut off by its time limit still leaves what it measured
        atomic_write(os.path.join(args.out, "gpu_check.md"), "\n".join(lines) + "\n")
        atomic_write_json(os.path.join(args.out, "gpu_check.json"), parts)

    if gpu:
        name, cap = torch.cuda.get_device_name(), torch.cuda.get_device_capability()
        lines.append(f"- device: {name}, sm_{cap[0]}{cap[1]}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
        code, sec, log = run([PY, "setup.py", "build_ext", "--inplace"], 300, {"TORCH_CUDA_ARCH_LIST": f"{cap[0]}.{cap[1]}"})
        parts["build"] = {"code": code, "seconds": round(sec, 1), "log": log[-800:]}
        lines.append(f"- extension build for sm_{cap[0]}{cap[1]}: {'ok' if code == 0 else 'FAILED'} ({sec:.0f} s)")
        save()
        code, sec, log = run([PY, "-m", "pytest", "-q", os.path.join(ROOT, "tests", "test_level_ce.py"), os.path.join(ROOT, "tests", "test_level_ce_soft.py"), "-k", "cuda"], 240,
                             {"IQA_REQUIRE_EXT": "1"})
        parts["cuda_tests"] = {"code": code, "seconds": round(sec, 1), "summary": log.strip().splitlines()[-1:] if log else []}
        lines.append(f"- CUDA tests: {'passed' if code == 0 else 'FAILED'}: {parts['cuda_tests']['summary']}")
        save()
        if importlib.util.find_spec("liger_kernel") is not None:
            lines.append("- liger-kernel: already installed")
        elif args.install_liger == "true":
            code, _, _ = run([PY, "-m", "pip", "install", "-q", "liger-kernel"], 120)
            lines.append(f"- liger-kernel install: {'ok' if code == 0 else 'failed (no Liger baseline)'}")
    else:
        lines.append("- device: none (CPU only)")
    lines += ["", "## The op: forward + backward of the fused level cross-entropy", ""]
    cases = OP_CASES if gpu else [("1024", "32000", "fp32")]
    for n, v, dtype in cases:
        path = os.path.join(args.out, f"op_{n}x{v}_{dtype}.json")
        code, sec, log = run([PY, os.path.join(ROOT, "dev", "bench_kernels.py"), "--device", "cuda" if gpu else "cpu", "--N", n, "--V", v, "--dtype",
                              dtype, "--out", path] + ([] if gpu else ["--iters", "3", "--no-compile"]), 240)
        parts[f"op_{n}x{v}_{dtype}"] = {"code": code, "seconds": round(sec, 1)}
        if code == 0:
            res = json.load(open(path))
            copy = res["machine"].get("copy_gbs")
            lines.append(f"N {n} x V {v}, {dtype}" + (f"; device copy bandwidth {copy:.0f} GB/s" if copy else ""))
            lines.append("")
            lines.append("| variant | ms | vs eager | GB/s (bytes-moved floor / time) | share of copy bandwidth | peak MB |")
            lines.append("|---|---|---|---|---|---|")
            liger = next((r for r in res["results"] if r["variant"] == "liger"), None)
            for r in res["results"]:
                share = f"{100 * r['floor_gbs'] / copy:.1f} %" if copy else "-"
                lines.append(f"| {r['variant']} | {r['ms_median']:.3f} | {r['speedup_vs_eager']:.2f}x | {r['floor_gbs']:.0f} | "
                             f"{share} | {r['peak_mb']:.0f} |")
            if liger:
                ours = next(r for r in res["results"] if r["variant"] == "ours_inplace")
                lines.append(f"\nours (in-place) vs Liger: {liger['ms_median'] / ours['ms_median']:.2f}x")
            lines.append("")
        else:
            lines.append(f"N {n} x V {v}, {dtype}: FAILED ({code}): {log[-400:]}")
        save()
    if gpu:
        lines += ["## Training step (random weights, synthetic batch; bench_train.py)", "",
                  "| preset | trainable | batch x tokens | image tokens | steps/s | samples/s | tokens/s | peak GiB | estimated GiB | measured / estimated | MFU |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for preset, trainable, batch, seq in TRAIN_CASES:
            path = os.path.join(args.out, f"train_{preset}.json")
            code, sec, log = run([PY, os.path.join(ROOT, "dev", "bench_train.py"), "--preset", preset, "--trainable", trainable, "--batch_size", batch,
                                  "--seq_len", seq, "--steps", "5", "--warmup", "2", "--out", path], 150)
            parts[f"train_{preset}"] = {"code": code, "seconds": round(sec, 1), "log": log[-600:] if code else ""}
            if code == 0:
                r = json.load(open(path))["step"]
                lines.append(f"| {preset} | {trainable} | {batch} x {seq} | {r['image_tokens']} | {r['steps_per_s']:.2f} | "
                             f"{r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['peak_gib']:.1f} | {r['estimated_gib']:.1f} | "
                             f"{r['measured_over_estimated']:.2f} | {r.get('mfu', float('nan')):.1%} |")
            else:
                lines.append(f"| {preset} | {trainable} | {batch} x {seq} | failed ({code}: out of memory or time?) | | | | | | | |")
            save()
    save()
    print("\n".join(lines))
    if not gpu:
        print(f"\ngpu_check: no CUDA device here: the extension's CUDA build, the CUDA tests, the GPU op benchmark and the "
              f"training-step benchmark need one. The CPU parts ran (-> {args.out}/gpu_check.md).", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
