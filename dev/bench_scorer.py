"""Scoring throughput: images/s of the batched Scorer against the per-image loop (batch 1), in the same run, on the
same images, with the scores of both compared.

    python dev/bench_scorer.py                                              # tiny mPLUG-Owl2 and LLaVA-OneVision, CPU
    python dev/bench_scorer.py --models tiny:xcomposer2 --n 64 --batch_size 16 --out out/bench_scorer.json
    python dev/bench_scorer.py --models /ckpt/one-align --n 256 --batch_size 32        # a real checkpoint on a GPU

Images: --n random photos-like arrays in a few sizes (so that anyres families get different token counts), decoded
from PNG files by the same DataLoader path `evaluate.py score --images` uses. Each configuration runs once to warm up,
then --repeats times; the median is reported. Results: printed, and written with --out (JSON).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from iqa_vlm.common import atomic_write_json  # noqa: E402
from iqa_vlm.data import load_image  # noqa: E402
from iqa_vlm.studies.scorer import Scorer  # noqa: E402

SIZES = [(64, 48), (48, 64), (56, 56), (80, 40)]


def make_images(folder, n, seed=0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        base = rng.random((h // 8 + 1, w // 8 + 1, 3))  # smooth blobs, then noise: something like a photo
        arr = np.kron(base, np.ones((8, 8, 1)))[:h, :w] * 200 + rng.random((h, w, 3)) * 55
        path = os.path.join(folder, f"{i:04d}.png")
        Image.fromarray(arr.astype("uint8")).save(path)
        paths.append(path)
    return paths


def timed(scorer, images, batch_size, repeats):
    scorer.batch_size = batch_size
    scorer(images[:batch_size])  # warm-up
    times, scores = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        scores = scorer(images)
        times.append(time.perf_counter() - t)
    return statistics.median(times), scores


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny:mplug_owl2,tiny:llava_onevision", help="comma-separated model names")
    ap.add_argument("--n", type=int, default=32, help="images")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    machine = torch.cuda.get_device_name() if device == "cuda" else f"{platform.processor() or platform.machine()}, " \
                                                                     f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    results = {"machine": machine, "device": device, "n_images": args.n, "batch_size": args.batch_size, "models": {}}
    with tempfile.TemporaryDirectory() as folder:
        images = [load_image(p) for p in make_images(folder, args.n)]
        for name in args.models.split(","):
            scorer = Scorer(name, batch_size=1)
            t1, s1 = timed(scorer, images, 1, args.repeats)
            tb, sb = timed(scorer, images, args.batch_size, args.repeats)
            row = {"prompt": scorer.prompt, "batch1_images_per_s": args.n / t1,
                   f"batch{args.batch_size}_images_per_s": args.n / tb, "speedup": t1 / tb,
                   "max_abs_score_difference": float((s1 - sb).abs().max())}
            results["models"][name] = row
            print(f"{name} ({scorer.prompt} prompt, {device}): batch 1 {args.n / t1:.1f} images/s, batch {args.batch_size} "
                  f"{args.n / tb:.1f} images/s, x{t1 / tb:.2f}; scores differ by at most {row['max_abs_score_difference']:.2e}")
    print(f"machine: {machine}")
    if args.out:
        atomic_write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
