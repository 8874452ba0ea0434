"""Validate, then benchmark, the fused level cross-entropy op against plain PyTorch (llm.c style).

    python setup.py build_ext --inplace
    python dev/bench_kernels.py                                   # CPU, fp32, N=2048, V in 32000,128256,151936
    python dev/bench_kernels.py --V 32000 --iters 20              # one vocab size
    python dev/bench_kernels.py --device cuda --out bench.json    # GPU, bf16, N=4096 (+ GB/s vs copy bandwidth)

Variants, each timed as forward + backward (torch.autograd.grad) of loss.mean() (median over --iters, after --warmup):
  ours          level_ce.level_cross_entropy (the extension: "cpp" or "cuda" backend)
  ours_inplace  the same with inplace_backward=True (gradient written over the logits buffer)
  eager         F.cross_entropy(logits.float(), label_smoothing) + softmax(logits[:, level_ids]), autograd
  compiled      torch.compile(eager)
  liger         Liger-Kernel's LigerCrossEntropyLoss (GPU, when installed)
Before timing, loss / probs / gradient of every variant are checked against `eager` (exit 1 on mismatch).

Peak memory = the most bytes of torch tensors alive at once during one step, beyond what was alive
before it (inputs excluded; the gradient counts). GPU: torch.cuda.max_memory_allocated. CPU:
torch.profiler(profile_memory=True) reports every CPU-allocator allocation and free with the
running total ("Total Allocated"); we take its maximum over the step. Both count tensors only
(not allocator caching, not the Python heap). On GPU the table also gives achieved bandwidth for
the bytes-moved floor (forward reads N*V*s bytes, backward reads N*V*s and writes N*V*s: 3*N*V*s,
s = bytes per logit) and the fraction of the measured device-to-device copy bandwidth that is.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repo root: iqa_vlm/ and the entry scripts
sys.path.insert(0, ROOT)
from iqa_vlm import level_ce
from iqa_vlm.common import atomic_write_json

LEVELS = [16, 17, 18, 19, 20]
EPS = 0.1
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def eager(x, y, lv):
    xf = x.float()
    loss = F.cross_entropy(xf, y, label_smoothing=EPS, reduction="none")
    probs = torch.softmax(xf.detach()[:, lv], dim=-1)
    return loss, probs


def ours(x, y, lv):
    return level_ce.level_cross_entropy(x, y, lv, EPS)


def ours_inplace(x, y, lv):
    return level_ce.level_cross_entropy(x, y, lv, EPS, inplace_backward=True)


def liger_variant():
    """Liger-Kernel's fused cross-entropy (Triton, GPU only) as another baseline, or None when it is not installed.
    It computes the loss only: the level probabilities come from a plain softmax, outside the timed comparison's point."""
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss
    except ImportError:
        return None
    ce = LigerCrossEntropyLoss(label_smoothing=EPS, reduction="none")

    def liger(x, y, lv):
        return ce(x, y), torch.softmax(x.detach().float()[:, lv], dim=-1)
    try:  # an installed Liger built for another Triton fails at its first call; the other variants still run
        x = torch.randn(4, 64, device="cuda", requires_grad=True)
        liger(x, torch.zeros(4, dtype=torch.long, device="cuda"), torch.arange(5, device="cuda"))[0].sum().backward()
    except Exception as e:  # noqa: BLE001 -- any failure inside a third-party kernel means: no Liger row
        print(f"# liger-kernel installed but failed on a tiny input ({type(e).__name__}: {str(e)[:200]}): no Liger baseline")
        return None
    return liger


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare(x0, leaf, inplace):
    """Untimed: drop the old gradient; refill the logits an in-place backward overwrote."""
    leaf.grad = None
    if inplace:
        with torch.no_grad():
            leaf.copy_(x0)


def step(fn, leaf, y, lv):
    """One forward + backward; returns (loss, probs, grad). torch.autograd.grad hands the gradient
    back as produced, as it would flow into the op upstream of the logits (no .grad accumulation)."""
    loss, probs = fn(leaf, y, lv)
    (grad,) = torch.autograd.grad(loss.mean(), leaf)
    return loss, probs, grad


def peak_bytes(device, run):
    """Peak extra tensor bytes alive during run()."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = [e["args"] for e in json.load(f)["traceEvents"] if e.get("name") == "[memory]"]
    finally:
        os.unlink(path)
    events = [a for a in events if a.get("Device Type", 0) == 0]
    if not events:
        return 0
    start = events[0]["Total Allocated"] - events[0]["Bytes"]
    return max(a["Total Allocated"] for a in events) - start


def copy_bandwidth(device, nbytes=1 << 30, iters=20):
    """Device-to-device copy bandwidth in bytes/s (read + write counted)."""
    a = torch.empty(nbytes, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        b.copy_(a)
    sync(device)
    return 2 * nbytes * iters / (time.perf_counter() - t)


def bench_one(args, device, dtype, V, variants):
    N = args.N
    g = torch.Generator().manual_seed(0)
    x0 = (torch.randn(N, V, generator=g) * 2).to(dtype).to(device)
    y = torch.randint(0, V, (N,), generator=g).to(device)
    lv = torch.tensor(LEVELS, device=device)
    s = x0.element_size()
    rows = []
    ref = None
    for name, fn in variants.items():
        inplace = name == "ours_inplace"
        leaf = x0.clone().requires_grad_()
        prep = lambda leaf=leaf, inplace=inplace: prepare(x0, leaf, inplace)
        run = lambda leaf=leaf, fn=fn: step(fn, leaf, y, lv)
        prep()
        out = run()  # also compiles / warms caches
        out = [t.detach().float().clone() for t in out]
        if ref is None:
            ref = out
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        errs = [((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() for a, b in zip(out, ref)]
        if max(errs) > tol:
            print(f"VALIDATION FAILED: {name} V={V}: rel err loss/probs/grad = {errs} > {tol}")
            sys.exit(1)
        del out
        for _ in range(args.warmup):
            prep()
            run()
        times = []
        for _ in range(args.iters):
            prep()
            sync(device)
            t = time.perf_counter()
            run()
            sync(device)
            times.append(time.perf_counter() - t)
        prep()
        peak = peak_bytes(device, run)
        med = statistics.median(times)
        row = dict(variant=name, N=N, V=V, dtype=str(dtype).replace("torch.", ""), device=device.type,
                   ms_median=med * 1e3, ms_min=min(times) * 1e3, peak_mb=peak / 2**20, max_rel_err=max(errs))
        row["floor_gbs"] = 3 * N * V * s / med / 1e9  # bytes-moved floor / time
        rows.append(row)
        del leaf
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base = next(r for r in rows if r["variant"] == "eager")
    for r in rows:
        r["speedup_vs_eager"] = base["ms_median"] / r["ms_median"]
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--N", type=int, default=None, help="rows (default 2048 on CPU, 4096 on GPU)")
    p.add_argument("--V", default="32000,128256,151936", help="comma-separated vocab sizes")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default fp32 on CPU, bf16 on GPU")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default 10 CPU, 50 GPU)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--out", default=None, help="write results as JSON (atomically)")
    args = p.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.N = args.N or (4096 if gpu else 2048)
    args.iters = args.iters or (50 if gpu else 10)
    dtype = DTYPES[args.dtype or ("bf16" if gpu else "fp32")]
    be = level_ce.backend(device)
    if be == "torch":
        sys.exit(f"the extension does not run on {device} (backend 'torch'); build it: {level_ce.BUILD_CMD}")

    variants = {"eager": eager, "ours": ours, "ours_inplace": ours_inplace}
    if not args.no_compile:
        variants["compiled"] = torch.compile(eager)
    liger = liger_variant() if gpu else None
    if liger is not None:
        variants["liger"] = liger
    elif gpu:
        print("# no Liger baseline (pip install liger-kernel)")
    machine = dict(device=torch.cuda.get_device_name(device) if gpu else platform.processor() or platform.machine(),
                   threads=torch.get_num_threads(), torch=torch.__version__, backend=be,
                   cpu_kernel=getattr(level_ce.ext, "cpu_kernel", lambda: None)())
    if gpu:
        machine["copy_gbs"] = copy_bandwidth(device) / 1e9
    print(f"# {machine}")
    results = []
    for V in [int(v) for v in args.V.split(",")]:
        results += bench_one(args, device, dtype, V, variants)

    hdr = f"{'V':>7} {'variant':<13} {'ms (median)':>11} {'ms (min)':>9} {'vs eager':>8} {'peak MB':>9}"
    hdr += f" {'GB/s':>7} {'% copy bw':>9}" if gpu else ""
    print(hdr)
    for r in results:
        line = (f"{r['V']:>7} {r['variant']:<13} {r['ms_median']:>11.2f} {r['ms_min']:>9.2f} "
                f"{r['speedup_vs_eager']:>7.2f}x {r['peak_mb']:>9.1f}")
        if gpu:
            line += f" {r['floor_gbs']:>7.0f} {100 * r['floor_gbs'] / machine['copy_gbs']:>8.1f}%"
        print(line)
    print(f"# N={args.N} dtype={str(dtype).replace('torch.', '')} iters={args.iters} "
          f"(peak MB: extra tensor memory of one step; GB/s: 3*N*V*s bytes / median time)")
    if args.out:
        atomic_write_json(args.out, dict(machine=machine, args=vars(args), results=results))


if __name__ == "__main__":
    main()
