"""Nothing lost, nothing silently wrong: each case a hostile but realistic user ran (the probe of 2026-12-05), and what
happens now. P = prepare_data.py on a small demo, TR = train.py config/demo.py with a few steps. The cases that need
several processes each are marked slow (python -m pytest -m slow, run by CI).

    python -m pytest tests/test_reliability.py -q
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from iqa_vlm import common, data as D, run_folder  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def P(out, *args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "prepare_data.py"), "--crops_per_class", "4", "--dead_leaves", "0",
                           "--out", str(out), *args], cwd=cwd, capture_output=True, text=True, env=ENV)


def TR(data, out, *args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), str(ROOT / "config" / "demo.py"), "--trainable",
                           "encoder,projector", "--batch_size", "4", "--data", str(data), "--out", str(out), *args],
                          cwd=cwd, capture_output=True, text=True, env=ENV)


def EV(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *args], cwd=cwd, capture_output=True, text=True,
                          env=ENV)


def ok(r):
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-3000:]
    return r


def refused(r, says):
    assert r.returncode != 0 and says in r.stderr, r.stdout[-1000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]  # one line, not a traceback
    return r


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "D"
    ok(P(out))
    return out


@pytest.fixture(scope="module")
def run(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "R"
    ok(TR(demo, out, "--max_steps", "2"))
    return out


# ----------------------------------------------------------------------------- data loss
def test_prepare_never_replaces_a_run_and_a_run_never_goes_into_its_data(demo, run, tmp_path):
    x = tmp_path / "X"
    ok(P(x))
    refused(TR(x, x, "--max_steps", "1"), "is a --data folder")
    refused(TR(demo, x, "--max_steps", "1"), "is a data folder prepare_data.py wrote")
    before = sorted(p.name for p in run.iterdir())
    refused(P(run), "holds a training run")
    assert sorted(p.name for p in run.iterdir()) == before and (run / "trainable.safetensors").exists()


def test_prepare_leaves_a_users_partial_folder_alone(tmp_path):
    (tmp_path / "X.partial").mkdir()
    (tmp_path / "X.partial" / "notes.txt").write_text("n")
    stale = tmp_path / ".X.partial-abc123"  # what a killed prepare leaves: its own, marked
    stale.mkdir()
    (stale / ".prepared").write_text('{"files": []}')
    ok(P(tmp_path / "X"))
    assert (tmp_path / "X.partial" / "notes.txt").read_text() == "n" and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["X", "X.partial"]


def test_prepare_through_a_link_writes_the_folder(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    ok(P(tmp_path / "link"))
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "meta.json").exists()
    assert not list(tmp_path.glob("*partial*"))


def test_a_run_copied_without_its_links_is_still_a_run(demo, run, tmp_path):
    copy = tmp_path / "COPY"
    shutil.copytree(run, copy, symlinks=True)
    for p in copy.iterdir():  # what rsync -r or a cloud sync keeps: the regular files only
        if p.is_symlink():
            p.unlink()
    kept = [p.name for p in copy.iterdir() if p.name.startswith("checkpoint-")]
    refused(TR(demo, copy, "--max_steps", "3"), "holds a run")
    assert [p.name for p in copy.iterdir() if p.name.startswith("checkpoint-")] == kept
    r = ok(TR(demo, copy, "--max_steps", "3", "--resume", "true"))
    assert "relinked" in r.stdout and "at step 2" in r.stdout
    assert json.load(open(copy / "config.json"))["steps_done"] == 3


@pytest.mark.slow  # several train/evaluate processes: CI's slow pass runs it
def test_overwrite_keeps_the_users_own_checkpoint_folder(demo, tmp_path):
    out = tmp_path / "R"
    ok(TR(demo, out, "--max_steps", "1"))
    shutil.copytree(out / "current", out / "checkpoint-keep")
    ok(TR(demo, out, "--max_steps", "1", "--overwrite", "true"))
    assert (out / "checkpoint-keep" / "trainable.safetensors").exists()
    ok(TR(demo, tmp_path / "new" / "nested", "--max_steps", "1", "--overwrite", "true"))  # nothing to replace: a new run


# ----------------------------------------------------------------------------- silently wrong
@pytest.mark.slow  # several train/evaluate processes: CI's slow pass runs it
def test_resume_refuses_regenerated_data_and_any_changed_setting(tmp_path):
    x = tmp_path / "X"
    ok(P(x))
    out = tmp_path / "R"
    ok(TR(x, out, "--max_steps", "2", "--ckpt_every", "1"))
    for flag, value in (("--grad_clip", "0.5"), ("--warmup_steps", "3"), ("--min_lr_frac", "0.1")):
        refused(TR(x, out, "--max_steps", "3", "--resume", "true", flag, value), f"{flag} ")
    ok(P(x, "--seed", "5"))  # other held-out photos: the run would now train on test images
    refused(TR(x, out, "--max_steps", "3", "--resume", "true"), "the run's data changed")
    r = ok(TR(x, out, "--max_steps", "3", "--resume", "true", "--allow_changed_data", "true"))
    assert "warning: " in r.stdout and "data changed" in r.stdout


def test_a_key_removed_from_config_json_is_a_change():
    before = {"lr": 2e-3, "seed": 1}
    assert run_folder.resume_changes(before, {"lr": 2e-3, "seed": 1, "max_steps": 9}) == []
    assert run_folder.resume_changes({"seed": 1}, {"lr": 0.5, "seed": 1}) == ["--lr (absent) -> 0.5"]


@pytest.mark.slow  # several train/evaluate processes: CI's slow pass runs it
def test_evaluation_reads_the_runs_recorded_data_from_any_folder(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    ok(P("small", cwd=a))
    ok(TR("small", a / "R", "--max_steps", "1", cwd=a))
    cfg = json.load(open(a / "R" / "config.json"))
    assert cfg["data"] == str(a / "small") and set(cfg["data_fingerprint"]) == {str(a / "small")}
    ok(P("small", "--seed", "3", cwd=b))  # a different folder of the same name where evaluation runs
    r = ok(EV("distortion", "--ckpt", str(a / "R"), "--limit", "4", "--generate", "false", cwd=b))
    assert json.load(open(a / "R" / "eval" / "limit4" / "eval_distortion.json"))["data"] == str(a / "small"), r.stdout


@pytest.mark.slow  # several train/evaluate processes: CI's slow pass runs it
def test_a_limit_run_never_overwrites_the_whole_result_and_bad_counts_stop_at_the_door(run):
    refused(EV("distortion", "--ckpt", str(run), "--limit", "-5"), "--limit -5: expected a count >= 0")
    refused(EV("distortion", "--ckpt", str(run), "--batch_size", "0"), "--batch_size 0: expected a count > 0")
    refused(EV("distortion", "--ckpt", str(run), "--model", "tiny:qwen2_vl"), "not both")
    refused(EV("distortion", "--ckpt", str(run), "--data", f"{run}/x,{run}/./x"), "names a folder twice")
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / "eval_distortion.json").write_text('{"n": 32}')
    ok(EV("distortion", "--ckpt", str(run), "--limit", "3", "--generate", "false"))
    assert json.load(open(run / "eval" / "eval_distortion.json")) == {"n": 32}
    assert json.load(open(run / "eval" / "limit3" / "eval_distortion.json"))["n"] == 3


def test_evaluation_holds_the_run_so_overwrite_waits(demo, run):
    common.folder_lock(run, "test", shared=True)  # as a running evaluate.py holds it
    try:
        refused(TR(demo, run, "--max_steps", "1", "--overwrite", "true"), "is held by another process")
        assert (run / "trainable.safetensors").exists()
    finally:
        common._LOCKS.pop(str(run.parent / f".{run.name}.lock")).close()


def test_training_holds_its_data_so_prepare_waits(demo):
    common.folder_lock(demo, "train.py", shared=True)  # as a running train.py reads it
    try:
        refused(P(demo, "--seed", "9"), "is held by another process")
    finally:
        common._LOCKS.pop(str(demo.parent / f".{demo.name}.lock")).close()


def test_config_values_are_type_checked_and_constants_are_not_settable(tmp_path, demo):
    defaults = {"batch_size": 8, "seed": 1337, "export": "", "lr": 2e-5, "resume": False}
    for argv, says in ((["--batch_size", "8.5"], "--batch_size expects an integer, got '8.5'"),
                       (["--seed", "1.5"], "--seed expects an integer"),
                       (["--export", "None"], "--export None: give ''"),
                       (["--CHECKPOINT_PREFIX", "../escaped-"], "unknown config key --CHECKPOINT_PREFIX")):
        with pytest.raises(SystemExit, match=says.replace("(", r"\(")):
            common.apply_overrides(dict(defaults), argv)
    for body, says in (("export = None\n", r"cfg.py:1: export = None: expected text"),
                       ("lr = 1e-4\nbatch_size = [8]\n", r"cfg.py:2: batch_size = \[8\]: expected an integer"),
                       ("lr = 1e-4\n\nseed = int('x')\n", r"cfg.py:3: ValueError"),
                       ("lr = (\n", r"cfg.py:1: ")):
        (tmp_path / "cfg.py").write_text(body)
        with pytest.raises(SystemExit, match=says):
            common.apply_overrides(dict(defaults), [str(tmp_path / "cfg.py")])
    assert common.apply_overrides(dict(defaults), ["--lr", "1", "--batch_size", "4"])["lr"] == 1.0
    refused(TR(demo, tmp_path / "R", "--SCORE_PREFIX", "x"), "unknown config key --SCORE_PREFIX")
    assert not (tmp_path / "R").exists()


@pytest.mark.parametrize("args,says", [(["--data_missing"], None),
                                       (["--mix", "score:x"], "is not NAME:WEIGHT"),
                                       (["--batch_size", "8.5"], "expects an integer")])
def test_argument_errors_come_before_the_model_loads(demo, tmp_path, args, says):
    if args == ["--data_missing"]:
        r = subprocess.run([sys.executable, str(ROOT / "train.py"), str(ROOT / "config" / "demo.py"), "--data",
                            str(tmp_path / "nope"), "--out", str(tmp_path / "R")], cwd=ROOT, capture_output=True,
                           text=True, env=ENV)
        refused(r, "no such folder (prepare_data.py writes one)")
    else:
        refused(TR(demo, tmp_path / "R", *args), says)
    assert "trainable" not in (tmp_path / "R").as_posix() or not (tmp_path / "R" / "config.json").exists()


def test_a_resume_pt_without_optimizer_is_refused_before_the_model(demo, tmp_path):
    import torch
    out = tmp_path / "R"
    ok(TR(demo, out, "--max_steps", "1"))
    path = os.path.realpath(out / "resume.pt")
    state = torch.load(path, weights_only=False)
    del state["optimizer"]
    torch.save(state, path)
    refused(TR(demo, out, "--max_steps", "2", "--resume", "true"), "lacks optimizer")


@pytest.mark.slow  # several train/evaluate processes: CI's slow pass runs it
def test_export_follows_the_umask_and_replaces_only_an_export(demo, tmp_path):
    out, e = tmp_path / "R", tmp_path / "E"
    ok(TR(demo, out, "--max_steps", "1", "--export", str(e)))
    files = [p for p in e.rglob("*") if p.is_file()]
    assert files and all(p.stat().st_mode & 0o777 == 0o666 & ~common.UMASK for p in files)
    (tmp_path / "F").mkdir()
    (tmp_path / "F" / "mine.txt").write_text("x")
    refused(TR(demo, tmp_path / "R2", "--max_steps", "1", "--export", str(tmp_path / "F")), "holds files it did not write")


# ----------------------------------------------------------------------------- images and records
def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "x16.png")
    with Image.open(tmp_path / "x16.png") as im:
        assert im.mode.startswith("I")  # PIL reads it as 16-bit: convert("RGB") would clip it to white
    rgb = np.asarray(D.load_image(tmp_path / "x16.png"))
    assert rgb.shape == (64, 64, 3) and abs(rgb[..., 0].astype(float) - ramp / 257).max() <= 0.5
    assert (rgb == 255).mean() < 0.01


def test_exif_orientation_is_applied(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :10] = 255  # a white band on the left of a landscape image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(img).save(tmp_path / "r.jpg", exif=exif, quality=95)
    rgb = np.asarray(D.load_image(tmp_path / "r.jpg"))
    assert rgb.shape == (40, 20, 3) and rgb[:10].mean() > 200 and rgb[-10:].mean() < 50  # the band is now on top


@pytest.mark.parametrize("record,says", [
    ({"image": "a.png", "conversations": [{"from": "bot", "value": "<image>\nhi"}]}, "role 'bot'"),
    ({"image": "a.png", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}]}, "0 <image> tags"),
    ({"image": "a.png", "conversations": [{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "x"}]},
     "2 <image> tags"),
    ({"image": "a.png", "conversations": "human: hi"}, "'conversations' must be a non-empty list"),
    ({"image": 7, "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]}, "'image' must be a path"),
    ({"image": {"a": 1}, "conversations": [{"from": "human", "value": "<image>"}]}, "'image' must be a path"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": None}]}, "value text"),
])
def test_bad_records_name_file_and_line_at_load(tmp_path, record, says):
    good = {"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "x"}]}
    (tmp_path / "train.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=rf"train.jsonl:2: .*{says}".replace("(", r"\(").replace("[", r"\[")):
        D.load_records(str(tmp_path), "train")


def test_instruction_data_checks_types_and_leaves_out_runaway_records(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    entries = [{"id": 1, "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                            {"from": "gpt", "value": "Fine."}]},
               {"id": 2, "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                            {"from": "gpt", "value": "x" * 380000}]}]
    (tmp_path / "d.json").write_text(json.dumps(entries))
    records, report = D.read_instruction(tmp_path / "d.json", tmp_path)
    assert len(records) == 1 and report["skipped"] == {f"over {D.MAX_CHARS} characters": 1}
    entries[1] = {"id": 3, "image": 5, "conversations": entries[0]["conversations"]}
    (tmp_path / "d.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"d.json entry 2: 'image' must be a path"):
        D.read_instruction(tmp_path / "d.json", tmp_path)


# ----------------------------------------------------------------------------- disk full, read-only
def test_a_failed_save_leaves_no_partial_folder(tmp_path, monkeypatch):
    real_open = open
    calls = []

    def full_disk(path, mode="r", *a, **k):
        if "w" in mode and ".partial" in str(path):
            calls.append(path)
            if len(calls) == 2:
                raise OSError(28, "No space left on device")
        return real_open(path, mode, *a, **k)
    monkeypatch.setattr("builtins.open", full_disk)
    with pytest.raises(OSError):
        common.write_checkpoint(str(tmp_path), {"a.bin": b"1", "b.bin": b"2"}, "checkpoint-00000001-1")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []  # the half-written folder went with the error
    common.write_checkpoint(str(tmp_path), {"a.bin": b"1", "b.bin": b"2"}, "checkpoint-00000001-2")
    assert (tmp_path / "a.bin").read_bytes() == b"1"


def test_unwritable_outputs_fail_before_the_work(tmp_path, monkeypatch):
    def read_only(path, data):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(common, "atomic_write", read_only)
    with pytest.raises(SystemExit, match="cannot write into .*Read-only file system"):
        common.check_writable(str(tmp_path / "o"), "evaluate.py distortion")


def test_a_prepare_that_fails_midway_leaves_no_temporary_folder(tmp_path, monkeypatch):
    from iqa_vlm.studies import demo_set

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(demo_set, "write_demo", disk_full)
    with pytest.raises(OSError):
        demo_set.make_demo(str(tmp_path / "X"), crops_per_class=4, dead_leaves=0)
    assert not list(tmp_path.glob(".X.partial-*"))


def test_a_record_longer_than_the_models_context_stops_before_the_first_step(demo, tmp_path):
    long = tmp_path / "L"
    long.mkdir()
    rec = json.loads(open(demo / "train.jsonl").readline())
    rec["image"] = str(demo / rec["image"])
    rec["conversations"][-1]["value"] = "blur " * 700  # 700 words of the tiny vocabulary: past its 512 positions
    (long / "train.jsonl").write_text(json.dumps(rec) + "\n")
    shutil.copy(demo / "meta.json", long / "meta.json")
    refused(TR(long, tmp_path / "R", "--max_steps", "1"), "longer than tiny's context (512 tokens)")
    refused(TR(f"{demo},{demo}/.", tmp_path / "R", "--max_steps", "1"), "names a folder twice")


def test_a_pathway_folder_is_prepared_again_and_a_failed_first_run_can_be_retried(demo, tmp_path):
    import prepare_data
    pw = tmp_path / "PW"
    for seed in ("0", "1"):  # the views' locks sit inside PW; they are not data, so a second prepare goes ahead
        prepare_data.main(["--task", "pathway", "--demo", str(demo), "--out", str(pw), "--seed", seed])
    assert json.load(open(pw / "one_stage" / "meta.json"))["task"] == "pathway"
    out = tmp_path / "R"
    run_folder.claim_run(str(out), str(demo), False, False)  # a run that failed before its first save leaves its marker
    assert (out / ".run").exists() and run_folder.is_run(str(out)) == []
    common._LOCKS.pop(str(tmp_path / ".R.lock")).close()


def test_a_reader_without_a_writable_lock_file_reads_without_it(tmp_path, monkeypatch, capsys):
    import builtins
    real_open = builtins.open

    def read_only(path, mode="r", *a, **k):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, mode, *a, **k)
    monkeypatch.setattr(builtins, "open", read_only)
    common.folder_lock(tmp_path / "data", "train.py", shared=True)
    assert "reading without a lock" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="cannot lock .*Permission denied"):
        common.folder_lock(tmp_path / "out", "train.py")


def test_absent_keys_of_an_older_run_count_as_their_defaults():
    assert run_folder.resume_changes({"seed": 1}, {"lr": 2e-5, "seed": 1}, {"lr": 2e-5}) == []
    assert run_folder.resume_changes({"seed": 1}, {"lr": 0.5, "seed": 1}, {"lr": 2e-5}) == ["--lr (absent) -> 0.5"]
