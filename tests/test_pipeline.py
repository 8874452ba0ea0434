"""End to end on a tiny demo set: prepare -> train -> evaluate, resume, and DDP on CPU."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file
from test_datasets import TABLE, build_pyiqa, full_meta, meta_file, placeholder, rows_of, type_field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(*args, env=None):
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    sh("prepare_data.py", "--out", str(out), "--crops_per_class", "4")
    return out


def test_demo_set_is_deterministic_and_split_by_photo(demo, tmp_path):
    sh("prepare_data.py", "--out", str(tmp_path / "again"), "--crops_per_class", "4")
    a = open(demo / "train.jsonl").read()
    assert a == open(tmp_path / "again" / "train.jsonl").read()
    meta = json.load(open(demo / "meta.json"))
    assert len(meta["test_photos"]) >= 4
    # the answer prefix and the closed set are recorded once, and every scoring stage reads them from here
    from iqa_vlm.data import read_closed_set
    from iqa_vlm.studies.distortion import DISTORTION_PREFIX
    assert (meta["answer_prefix"], meta["closed_set"]) == (DISTORTION_PREFIX, meta["labels"])
    assert read_closed_set(str(demo)) == (meta["labels"], DISTORTION_PREFIX)
    train = [json.loads(l) for l in open(demo / "train.jsonl")]
    test = [json.loads(l) for l in open(demo / "test.jsonl")]
    assert not {r["ref"] for r in train} & {r["ref"] for r in test}
    assert {r["label"] for r in test} == set(meta["labels"])
    # matplotlib's and scikit-learn's photos are colour and only train (the held-out draw is over DEMO_TEST_POOL)
    from iqa_vlm.studies import demo_set
    assert set(demo_set.EXTRA_PHOTOS) <= {r["ref"] for r in train if r["label"] == "colorfulness"}
    assert set(meta["test_photos"]) <= set(demo_set.DEMO_TEST_POOL)
    assert meta["dead_leaves"] == demo_set.DEAD_LEAVES > 0  # prepare_data.py's default, training only
    assert set(demo_set.dead_leaves_names(demo_set.DEAD_LEAVES)) <= {r["ref"] for r in train}
    for r in train[:50]:
        assert (r["severity"] == 0) == (r["label"] == "clean") and 1 <= r["mos"] <= 5
        assert os.path.exists(demo / r["image"])


def test_dead_leaves_are_occluding_disks_of_natural_colours():
    import numpy as np
    from iqa_vlm.studies import demo_set
    sharp = demo_set.dead_leaves(0, size=128, blur=0)
    assert sharp.shape == (128, 128, 3) and sharp.dtype == np.uint8 and not sharp.flags.writeable
    assert np.array_equal(sharp, demo_set.dead_leaves.__wrapped__(0, size=128, blur=0))  # deterministic, not just cached
    assert not np.array_equal(sharp, demo_set.dead_leaves(1, size=128, blur=0))
    # unblurred, every pixel is one disk's colour, taken from the natural photos' palette
    palette = {tuple(c) for c in (demo_set.dead_leaves_palette() + 0.5).astype(np.uint8)}
    colours = {tuple(c) for c in sharp.reshape(-1, 3)}
    assert colours <= palette and len(colours) > 50
    # radius density ~ r^-3 from 3 px: small disks dominate, so many 4-pixel runs of a row cross a disk edge (about
    # half at this size), yet flat areas remain (disks up to a quarter of the side)
    edges = (np.abs(np.diff(sharp.astype(int), axis=1)).sum(-1) > 0)[:, :124].reshape(128, 31, 4).any(-1).mean()
    assert 0.2 < edges < 0.95
    blurred = demo_set.dead_leaves(0, size=128)
    assert 0 < np.abs(blurred.astype(int) - sharp).mean() < 20


def test_dead_leaves_only_add_training_crops(tmp_path):
    from iqa_vlm.studies import demo_set
    a = demo_set.make_demo(str(tmp_path / "a"), crops_per_class=2, dead_leaves=0)
    b = demo_set.make_demo(str(tmp_path / "b"), crops_per_class=2, dead_leaves=2)
    assert (a["dead_leaves"], b["dead_leaves"], a["test_photos"]) == (0, 2, b["test_photos"])
    test = (tmp_path / "a" / "test.jsonl").read_text()
    assert test == (tmp_path / "b" / "test.jsonl").read_text()  # each photo has its own random stream
    for r in map(json.loads, test.splitlines()):
        assert (tmp_path / "a" / r["image"]).read_bytes() == (tmp_path / "b" / r["image"]).read_bytes()
    train = [json.loads(l) for l in open(tmp_path / "b" / "train.jsonl")]
    assert {r["label"] for r in train if r["ref"] == "dead_leaves_1"} == set(a["labels"])
    assert b["counts"]["train"]["n"] > a["counts"]["train"]["n"]
    with pytest.raises(ValueError, match="dead_leaves"):
        demo_set.make_demo(str(tmp_path / "c"), dead_leaves=-1)


def test_train_evaluate_resume(demo, tmp_path):
    """train.py's own defaults (a real 7B fine-tune's: gradient checkpointing, warmup share, lr 2e-5) on the tiny model."""
    out = tmp_path / "run"
    log = sh("train.py", "--data", str(demo), "--out", str(out), "--max_steps", "3", "--batch_size", "4", "--log_every", "1")
    assert "samples/s" in log and "loss" in log
    cfg = json.load(open(out / "config.json"))
    assert cfg["finished"] and cfg["steps_done"] == 3 and cfg["trainable"] == "encoder,projector"
    tensors = load_file(out / "trainable.safetensors")
    assert tensors and all(k.startswith(("model.vision_tower", "model.multi_modal_projector")) for k in tensors)
    sh("evaluate.py", "distortion", "--ckpt", str(out), "--limit", "16", "--batch_size", "8")
    res = json.load(open(out / "eval" / "limit16" / "eval_distortion.json"))  # RUN/eval/, a --limit run in limitN/
    assert res["n"] == 16 and 0 <= res["accuracy"] <= 1 and len(res["confusion"]) == 8
    assert sum(map(sum, res["confusion"])) == 16 and os.path.getsize(out / "eval" / "limit16" / "confusion.png") > 1000
    # resume continues from step 3, with the optimizer and data position
    log = sh("train.py", "--data", str(demo), "--out", str(out), "--max_steps", "5", "--batch_size", "4", "--resume", "true", "--log_every", "1")
    assert "resumed from" in log and "at step 3" in log
    assert json.load(open(out / "config.json"))["steps_done"] == 5
    assert [r["step"] for r in map(json.loads, open(out / "log.jsonl"))][-1] == 5


def test_unknown_config_key_is_an_error(demo):
    r = subprocess.run([sys.executable, "train.py", "--lrr", "1"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "unknown config key --lrr" in r.stderr


@pytest.mark.slow
def test_ddp_two_processes_end_identical(demo, tmp_path):
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "train.py", "config/demo.py", "--data", str(demo), "--out", str(out), "--max_steps", "20", "--batch_size", "4",
                        "--log_every", "5", "--check_ddp_sync", "true"],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-4000:]
    assert "ranks identical: True" in r.stdout, r.stdout[-2000:]
    cfg = json.load(open(out / "config.json"))
    assert cfg["world_size"] == 2 and cfg["steps_done"] == 20


@pytest.mark.parametrize("which", ["excerpt", full_meta])
def test_prepare_distortion_on_real_pyiqa_metadata(tmp_path, which):
    """prepare_data.py --task distortion on placeholder images named after IQA-PyTorch's KADID-10k and LIVE files."""
    kadid, live = tmp_path / "kadid10k", tmp_path / "live"
    kadid_rows, kadid_meta = build_pyiqa("kadid10k", kadid, which)
    shutil.copy(kadid_meta, kadid / "meta_info_KADID10kDataset.csv")  # found next to the images
    live_rows, _ = build_pyiqa("live", live, which)
    out = tmp_path / "out"
    sh("prepare_data.py", "--task", "distortion", "--kadid", str(kadid), "--live", str(live), "--out", str(out), "--check_images", "false")
    meta = json.load(open(out / "meta.json"))
    counts = {}
    for split in ("train", "test"):
        for key, n in meta["counts"][split]["by_source_label"].items():
            counts[key] = counts.get(key, 0) + n
    expected, n_excluded = {}, {}
    for source, rows in (("kadid10k", kadid_rows), ("live", live_rows)):  # recounted with the test's own table
        for r in rows:
            label = TABLE[source].get(type_field(source, r["dist_name"]))
            if label is None:
                n_excluded[source] = n_excluded.get(source, 0) + 1
            else:
                expected[f"{source}/{label}"] = expected.get(f"{source}/{label}", 0) + 1
        expected[f"{source}/clean"] = len({r["ref_name"] for r in rows})
    assert counts == expected
    assert meta["datasets"]["kadid10k"]["n_excluded_types"] == n_excluded.get("kadid10k", 0)
    assert meta["datasets"]["live"]["n_excluded_types"] == n_excluded.get("live", 0)
    # every type read, kept or left out with its reason, per dataset in meta.json
    cov = meta["datasets"]["kadid10k"]["coverage"]
    assert sum(c["n"] for c in cov.values()) == len(kadid_rows)
    assert all((c["class"] is None) == bool(c.get("why")) for c in cov.values())
    if which == "full":
        assert counts == {"kadid10k/blur": 1620, "kadid10k/noise": 1620, "kadid10k/brightness": 1215, "kadid10k/compression": 1215,
                          "kadid10k/contrast": 405, "kadid10k/colorfulness": 810, "kadid10k/jitter": 810, "kadid10k/clean": 81,
                          "live/blur": 145, "live/noise": 145, "live/compression": 489, "live/clean": 29}
    train = [json.loads(l) for l in open(out / "train.jsonl")]
    test = [json.loads(l) for l in open(out / "test.jsonl")]
    # the distortion paper (000, Sec. 4.1): the four sets mixed, "randomly split ... under the ratio 8:2": the default
    assert meta["split_policy"].startswith("random over the mix of all sets")
    assert train and test and len(test) == round(0.2 * (len(train) + len(test)))
    r = next(r for r in train if r["source"] == "live" and r["label"] != "clean")
    assert 0 <= r["mos_norm"] <= 1 and r["level"] in ("bad", "poor", "fair", "good", "excellent")
    # an image listed but absent: the error names it and the metadata line, and nothing is written
    os.unlink(kadid / "images" / "I01_01_03.png")
    r = subprocess.run([sys.executable, "prepare_data.py", "--task", "distortion", "--kadid", str(kadid), "--out", str(tmp_path / "o2")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "I01_01_03.png" in r.stderr and "meta_info_KADID10kDataset.csv" in r.stderr
    assert not (tmp_path / "o2" / "meta.json").exists()


def train_defaults(script="train.py"):
    """train.py's (or train_grpo.py's) config block (every top-level constant assigned before apply_overrides), read
    without running it."""
    import ast
    tree = ast.parse(open(os.path.join(ROOT, script)).read())
    defaults = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and len(node.targets) == 1:
            defaults[node.targets[0].id] = node.value.value
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "config":
            break
    return defaults


def test_defaults_are_for_a_real_fine_tune():
    d = train_defaults()
    assert d["lr"] <= 1e-4 and d["augment"] == "none" and d["label_smoothing"] == 0.0 and d["grad_ckpt"] is True


def recipe_script(recipe):
    """train_grpo.py for a config that sets one of its own keys, else train.py."""
    keys = {}
    exec(open(os.path.join(ROOT, "config", recipe)).read(), {}, keys)
    return "train_grpo.py" if {"reward", "objective"} & set(keys) else "train.py"


RECIPES = sorted(f for f in os.listdir(os.path.join(ROOT, "config")) if f.endswith(".py"))
TRAIN_RECIPES = [f for f in RECIPES if recipe_script(f) == "train.py"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_sets_only_known_keys(recipe):
    from iqa_vlm.common import apply_overrides
    resolved = apply_overrides(train_defaults(recipe_script(recipe)), [os.path.join(ROOT, "config", recipe)])
    keys = {}
    exec(open(os.path.join(ROOT, "config", recipe)).read(), {}, keys)
    assert keys and all(resolved[k] == v for k, v in keys.items()), recipe
    if not recipe.startswith(("demo", "grpo_demo")):  # the paper recipes: a real checkpoint, a peak lr a 7B survives
        assert not resolved["model"].startswith("tiny") and resolved["lr"] <= 2e-4


def run_train(*args):
    return subprocess.run([sys.executable, "train.py", "config/demo.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


SLOW = pytest.mark.slow  # a process each (~4 s of imports): two run by default, the rest with -m slow
@pytest.mark.parametrize("bad,says", [(["--batch_size", "0"], "--batch_size must be a positive integer"),
                                      pytest.param(["--grad_accum", "0"], "--grad_accum must be a positive integer", marks=SLOW),
                                      pytest.param(["--batch_size", "-4"], "--batch_size must be a positive integer", marks=SLOW),
                                      (["--lr", "nan"], "--lr must be a finite number > 0"),
                                      pytest.param(["--max_steps", "-1"], "--max_steps must be a finite number >= 0", marks=SLOW),
                                      pytest.param(["--warmup_frac", "1"], "--warmup_frac must be in [0, 1)", marks=SLOW),
                                      pytest.param(["--trainable", "llm,llm:0-0"], "'llm:0-0' overlaps 'llm'", marks=SLOW),
                                      pytest.param(["--resume", "true", "--overwrite", "true"], "give one", marks=SLOW)])
def test_bad_arguments_stop_at_the_door_naming_the_key(demo, tmp_path, bad, says):
    r = run_train("--data", str(demo), "--out", str(tmp_path / "run"), *bad)
    assert r.returncode != 0 and says in r.stderr, r.stderr[-1500:]
    assert not (tmp_path / "run").exists()  # nothing written


def test_a_run_folder_is_not_overwritten_by_surprise(demo, tmp_path):
    out = tmp_path / "run"
    assert run_train("--data", str(demo), "--out", str(out), "--max_steps", "1", "--batch_size", "4").returncode == 0
    (out / "eval").mkdir()
    (out / "eval" / "eval_distortion.json").write_text("{}")  # an evaluation of the first run
    r = run_train("--data", str(demo), "--out", str(out), "--max_steps", "1", "--batch_size", "4")
    assert r.returncode != 0 and "holds a run" in r.stderr and (out / "eval" / "eval_distortion.json").exists()
    r = run_train("--data", str(demo), "--out", str(out), "--max_steps", "2", "--batch_size", "4", "--overwrite", "true")
    assert r.returncode == 0, r.stderr[-1500:]
    assert not (out / "eval").exists() and json.load(open(out / "config.json"))["steps_done"] == 2


def test_a_diverged_run_stops_and_is_never_marked_finished(demo, tmp_path):
    out = tmp_path / "run"
    r = run_train("--data", str(demo), "--out", str(out), "--max_steps", "6", "--batch_size", "4", "--lr", "1e30",
                  "--warmup_steps", "1", "--grad_clip", "1e30", "--ckpt_every", "1")
    assert r.returncode != 0 and "non-finite" in r.stderr, r.stderr[-1500:]
    cfg = json.load(open(out / "config.json"))  # the last good checkpoint (--ckpt_every 1), not finished
    assert cfg["finished"] is False and 1 <= cfg["steps_done"] < 6


def test_evaluation_refuses_an_unfinished_run_unless_asked(demo, tmp_path):
    out = tmp_path / "run"
    assert run_train("--data", str(demo), "--out", str(out), "--max_steps", "1", "--batch_size", "4").returncode == 0
    cfg = json.load(open(out / "config.json"))
    (out / "config.json").write_text(json.dumps({**cfg, "finished": False}))  # as a killed run leaves it
    r = subprocess.run([sys.executable, "evaluate.py", "distortion", "--ckpt", str(out), "--limit", "4"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode != 0 and "an unfinished run" in r.stderr
    sh("evaluate.py", "distortion", "--ckpt", str(out), "--limit", "4", "--allow_unfinished", "true", "--generate", "false",
       "--tta", "true")  # the probabilities averaged over the 8 flips/rotations
    saved = json.load(open(out / "eval" / "limit4" / "eval_distortion.json"))
    assert saved["unfinished_checkpoint"] is True and saved["tta"] is True and saved["n"] == 4


CONSTANT_LR = ["--warmup_steps", "0", "--warmup_frac", "0", "--min_lr_frac", "1"]  # the schedule ignores the run's length


def test_a_resumed_run_equals_an_uninterrupted_one_bit_for_bit(demo, tmp_path):
    common = ["--data", str(demo), "--batch_size", "4", *CONSTANT_LR]  # flips/turns draw from the restored RNG
    assert run_train(*common, "--out", str(tmp_path / "whole"), "--max_steps", "6").returncode == 0
    # the split run with data-loader workers: resumed at step 3, they continue at the exact batch
    assert run_train(*common, "--out", str(tmp_path / "split"), "--max_steps", "3", "--num_workers", "2").returncode == 0
    r = run_train(*common, "--out", str(tmp_path / "split"), "--max_steps", "6", "--resume", "true", "--num_workers", "2")
    assert r.returncode == 0, r.stderr[-1500:]
    whole, split = load_file(tmp_path / "whole" / "trainable.safetensors"), load_file(tmp_path / "split" / "trainable.safetensors")
    assert whole.keys() == split.keys() and all(torch_equal(whole[k], split[k]) for k in whole)
    r = run_train(*common, "--out", str(tmp_path / "split"), "--max_steps", "7", "--resume", "true", "--lr", "1e-3")
    assert r.returncode != 0 and "--lr 0.002 -> 0.001" in r.stderr  # a resumed run keeps its settings


def torch_equal(a, b):
    import torch
    return torch.equal(a, b)


def test_a_checkpoint_is_made_current_at_once(demo, tmp_path):
    """A crash while writing the next checkpoint (a .partial folder, or a whole folder not yet switched to) leaves the
    previous one what every reader sees, and the next save clears the debris."""
    out = tmp_path / "run"
    assert run_train("--data", str(demo), "--out", str(out), "--max_steps", "2", "--batch_size", "4").returncode == 0
    good = load_file(out / "trainable.safetensors")
    (out / "checkpoint-00000009-1.partial").mkdir()
    (out / "checkpoint-00000009-1.partial" / "trainable.safetensors").write_bytes(b"half a file")
    shutil.copytree(out / "current", out / "checkpoint-00000009-2", symlinks=False)
    (out / "checkpoint-00000009-2" / "config.json").write_text("{broken")  # written, never made current
    shutil.copytree(out / "current", out / "checkpoint-keep")  # a user's own copy: never cleared
    assert load_file(out / "trainable.safetensors").keys() == good.keys()
    assert json.load(open(out / "config.json"))["steps_done"] == 2
    r = run_train("--data", str(demo), "--out", str(out), "--max_steps", "3", "--batch_size", "4", "--resume", "true")
    assert r.returncode == 0 and "at step 2" in r.stdout, r.stderr[-1500:]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == sorted(
        [os.readlink(out / "current"), "checkpoint-keep"])


def test_sigterm_saves_a_resumable_checkpoint(demo, tmp_path):
    import signal
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "train.py", "config/demo.py", "--data", str(demo), "--out", str(out),
                          "--max_steps", "100000", "--batch_size", "4", "--log_every", "1"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    for line in p.stdout:  # a few steps in, as a preemption would find it
        if line.startswith("step     3"):
            break
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, p.stderr.read()[-1500:]
    cfg = json.load(open(out / "config.json"))
    assert cfg["finished"] is False and cfg["steps_done"] >= 3
    r = run_train("--data", str(demo), "--out", str(out), "--max_steps", str(cfg["steps_done"] + 1), "--batch_size", "4",
                  "--resume", "true")
    assert r.returncode == 0 and f"at step {cfg['steps_done']}" in r.stdout and json.load(open(out / "config.json"))["finished"]


def test_prepare_data_never_deletes_what_it_did_not_write(tmp_path):
    import prepare_data
    koniq = tmp_path / "koniq"  # never read: both refusals come first
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "keep.txt").write_text("a user's file")
    for argv in (["--koniq", str(koniq), "--out", str(folder)],                    # a dataset flag without --task
                 ["--task", "score", "--koniq", str(koniq), "--out", str(folder)],  # a folder it did not write
                 ["--out", str(folder), "--crops_per_class", "4"]):                 # the demo into it
        with pytest.raises(SystemExit):
            prepare_data.main(argv)
        assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"], argv
    photos = tmp_path / "photos"
    (photos / "images").mkdir(parents=True)
    (photos / "images" / "mine.png").write_bytes(b"a user's photo")  # its file names, not its folder
    with pytest.raises(SystemExit):
        prepare_data.main(["--out", str(photos), "--crops_per_class", "4"])
    assert (photos / "images" / "mine.png").exists()
    prepare_data.main(["--out", str(tmp_path / "demo"), "--crops_per_class", "4"])
    prepare_data.main(["--out", str(tmp_path / "demo"), "--crops_per_class", "4"])  # its own folder: replaced
    assert (tmp_path / "demo" / ".prepared").exists() and (tmp_path / "demo" / "meta.json").exists()


def test_one_writer_per_folder(demo, tmp_path):
    """A second train.py or prepare_data.py into a folder another process is writing stops at once, naming the holder."""
    from iqa_vlm import common
    out = tmp_path / "run"
    out.mkdir()
    common.folder_lock(out, "test")  # as a running train.py holds it (OUT's lock, beside it)
    try:
        r = run_train("--data", str(demo), "--out", str(out), "--max_steps", "1", "--batch_size", "4")
        assert r.returncode != 0 and f"pid {os.getpid()}" in r.stderr and not (out / "config.json").exists()
    finally:
        common._LOCKS.pop(str(tmp_path / ".run.lock")).close()
    common.hold_lock(tmp_path / ".data.lock", "test")  # as a running prepare_data.py --out tmp/data holds it
    try:
        r = subprocess.run([sys.executable, "prepare_data.py", "--out", str(tmp_path / "data"), "--crops_per_class", "4"],
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode != 0 and "is held by" in r.stderr and not (tmp_path / "data").exists()
    finally:
        common._LOCKS.pop(str(tmp_path / ".data.lock")).close()


def test_outputs_follow_the_umask(tmp_path):
    from iqa_vlm.common import UMASK, atomic_write
    atomic_write(tmp_path / "x.json", "{}")
    assert os.stat(tmp_path / "x.json").st_mode & 0o777 == 0o666 & ~UMASK  # not mkstemp's 0600


def test_load_errors_name_the_file(demo, tmp_path):
    from iqa_vlm.model import load_checkpoint, load_model
    out = tmp_path / "run"
    assert run_train("--data", str(demo), "--out", str(out), "--max_steps", "1", "--batch_size", "4").returncode == 0
    weights = os.path.realpath(out / "trainable.safetensors")
    data = open(weights, "rb").read()
    open(weights, "wb").write(data[:len(data) // 2])  # a truncated copy
    with pytest.raises(SystemExit, match=r"trainable.safetensors: cannot read the trained tensors"):
        load_checkpoint(str(out))
    config = os.path.realpath(out / "config.json")
    open(config, "w").write("{broken")
    with pytest.raises(SystemExit, match=r"config.json: not valid JSON"):
        load_checkpoint(str(out))
    folder = tmp_path / "hub_folder"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    with pytest.raises(SystemExit, match=f"--model {folder}: cannot load it"):
        load_model(str(folder))


@pytest.mark.parametrize("argv,says", [(["--test_frac", "1.5"], "--test_frac 1.5: expected a share in [0, 1]"),
                                       (["--val_frac", "1"], "--val_frac 1.0: expected a share of the training part"),
                                       (["--crops_per_class", "0"], "expected at least 8 / 4")])
def test_prepare_arguments_are_checked(tmp_path, argv, says, capsys):
    import prepare_data
    with pytest.raises(SystemExit):
        prepare_data.main(["--out", str(tmp_path / "o"), *argv])
    assert says in capsys.readouterr().err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("which", ["excerpt", full_meta])
def test_whole_dataset_test_set_on_real_livec_metadata(tmp_path, which):
    """--test_frac 1 (how Q-SiT tests LIVE Challenge): every image but the training-only t1..t7 is tested, no val."""
    livec = tmp_path / "livec"
    rows = rows_of("meta_info_LIVEChallengeDataset.csv", which)
    for r in rows:
        placeholder(livec / "Images" / r["img_name"])
    shutil.copy(meta_file("meta_info_LIVEChallengeDataset.csv", which), livec)
    import prepare_data
    prepare_data.main(["--task", "score", "--livec", str(livec), "--test_frac", "1", "--out", str(tmp_path / "o")])
    meta = json.load(open(tmp_path / "o" / "meta.json"))
    assert {k: v["n"] for k, v in meta["counts"].items()} == {"train": 7, "val": 0, "test": len(rows) - 7}
    if which == "full":
        assert len(rows) - 7 == 1162


@pytest.mark.slow
def test_data_loader_workers_give_the_same_batches(demo, tmp_path):
    """Batches prepared by worker processes (each image's flip/turn drawn from its own seeded generator) train the same
    weights as batches prepared in the main process; the log records the time spent waiting for data."""
    common = ["--data", str(demo), "--batch_size", "4", "--max_steps", "3", "--log_every", "1"]
    assert run_train(*common, "--out", str(tmp_path / "w0"), "--num_workers", "0").returncode == 0
    r = run_train(*common, "--out", str(tmp_path / "w2"), "--num_workers", "2")
    assert r.returncode == 0 and "data loader workers: 2" in r.stdout, r.stderr[-1500:]
    a, b = load_file(tmp_path / "w0" / "trainable.safetensors"), load_file(tmp_path / "w2" / "trainable.safetensors")
    assert all(torch_equal(a[k], b[k]) for k in a)
    log = [json.loads(l) for l in open(tmp_path / "w2" / "log.jsonl")]
    assert all(0 <= r["data_wait"] <= 1 for r in log if "loss" in r) and (tmp_path / "w2" / "loss.png").exists()


# where each recipe's optimizer values come from (issue: fidelity): the distortion paper (000, Sec. 4.1: "AdamW ... with
# β1 = 0.9, β2 = 0.98, and ε = 1e-6") and the two-stage paper (001, Sec. 4.1, the same values); Q-Align's
# scripts/l1_koniq*.sh, DeQA-Score's scripts/train*.sh and Q-SiT's LLaVA-OneVision Trainer pass no optimizer flags,
# so transformers' TrainingArguments defaults apply (adam_beta1 0.9, adam_beta2 0.999, adam_epsilon 1e-8)
PAPER_ADAMW, HF_ADAMW = (0.9, 0.98, 1e-6), (0.9, 0.999, 1e-8)
ADAMW_OF = {"distortion_llava15_7b.py": PAPER_ADAMW, "distortion_mplug_owl2.py": PAPER_ADAMW,
            "two_stage_one_stage.py": PAPER_ADAMW, "two_stage_stage1.py": PAPER_ADAMW, "two_stage_stage2.py": PAPER_ADAMW,
            "qalign_koniq.py": HF_ADAMW, "qalign_koniq_lora.py": HF_ADAMW, "deqa_mplug_owl2.py": HF_ADAMW,
            "deqa_mplug_owl2_lora.py": HF_ADAMW, "deqa_llava_ov.py": HF_ADAMW, "deqa_qwen25vl.py": HF_ADAMW,
            "qsit_mini.py": HF_ADAMW, "qsit_7b.py": HF_ADAMW, "demo.py": PAPER_ADAMW}


@pytest.mark.parametrize("recipe", sorted(ADAMW_OF))
def test_each_recipe_has_its_sources_adamw(recipe):
    from iqa_vlm.common import apply_overrides
    r = apply_overrides(train_defaults(), [os.path.join(ROOT, "config", recipe)])
    assert (r["adam_beta1"], r["adam_beta2"], r["adam_epsilon"]) == ADAMW_OF[recipe]


def test_recipes_config_files_cover_every_file():
    assert set(ADAMW_OF) == set(TRAIN_RECIPES)  # train_grpo.py's recipes use transformers' AdamW defaults, fixed there


def test_q_align_and_deqa_recipes_match_their_released_scripts():
    """Q-Align (Q-Future/Q-Align 14dfdff): l1_koniq.sh trains every parameter (train_mem.py sets requires_grad on all
    without LoRA, lm_head and embeddings included); l1_koniq_lora.sh: LoRA rank 128 / alpha 256 / dropout 0.05 on
    q_proj and v_proj.multiway.1 (train_mem.py's lora_r, lora_alpha, lora_dropout and find_all_linear_names), only the
    LoRA tensors train, lr 2e-4, 1 epoch, batch 32. DeQA-Score's train.sh also trains every parameter."""
    from iqa_vlm.common import apply_overrides

    def recipe(name):
        return apply_overrides(train_defaults(), [os.path.join(ROOT, "config", name)])
    full, lora, deqa = recipe("qalign_koniq.py"), recipe("qalign_koniq_lora.py"), recipe("deqa_mplug_owl2.py")
    assert full["trainable"] == deqa["trainable"] == "encoder,projector,llm,head" and full["lora"] == 0
    # Q-SiT: LLaVA-NeXT's finetune_ov.sh trains mm_language_model, which in its train.py sets requires_grad on every LM
    # parameter, lm_head and embed_tokens included; its preprocess_qwen puts "You are a helpful assistant." first and
    # train.py moves the image ahead of the question
    qsit = recipe("qsit_mini.py")
    assert qsit["trainable"] == "encoder,projector,llm,head"
    assert (qsit["system_prompt"], qsit["image_first"]) == ("You are a helpful assistant.", True)
    assert (full["lr"], full["epochs"], full["batch_size"]) == (2e-5, 3, 8)
    assert (lora["trainable"], lora["lora"], lora["lora_alpha"], lora["lora_dropout"], lora["lora_targets"]) == \
        ("llm", 128, 256, 0.05, "q_proj|v_proj.multiway.1")
    assert (lora["lr"], lora["epochs"], lora["batch_size"], lora["grad_accum"]) == (2e-4, 1, 32, 1)


def test_adamw_values_reach_the_optimizer(demo, tmp_path):
    out = tmp_path / "run"
    r = run_train("--data", str(demo), "--out", str(out), "--max_steps", "1", "--batch_size", "4", "--adam_beta2", "0.95",
                  "--adam_epsilon", "1e-7", "--system_prompt", "A chat.", "--image_first", "true")  # the v1 keys run too
    assert r.returncode == 0, r.stderr[-1500:]
    import torch
    groups = torch.load(out / "resume.pt", weights_only=False)["optimizer"]["param_groups"]
    assert all(tuple(g["betas"]) == (0.9, 0.95) and g["eps"] == 1e-7 for g in groups)
