"""A train.py run folder: what makes a folder a run, what a run records of its data, and what a resumed run may change.

A run is known by its marker OUT/.run (a plain file, so a copy without symlinks is still a run), its checkpoint
folders (checkpoint-STEP-TIME, common.write_checkpoint) and the links through OUT/current. config.json records the
absolute path of every --data folder and a fingerprint of its split files and meta.json (size and SHA-256), so that a
resume, or an evaluation on the run's own data, finds out when the data changed under it.
"""
import os
import shutil

from iqa_vlm.common import (CHECKPOINT_NAME, EVAL_DIR, atomic_write_json, check_writable, folder_lock, fsync_dir,
                            read_json)
from iqa_vlm.data import PREPARED, file_digest

RUN_MARK = ".run"
RUN_FILES = ("config.json", "trainable.safetensors", "resume.pt")
LINKED = RUN_FILES + ("log.jsonl",)  # OUT/<name> -> current/<name>
# what a resumed run may change: where it is (a moved or copied folder), how long it runs, how often it logs and saves,
# how it loads data; any other change would make it another run than the one it continues
MAY_CHANGE_ON_RESUME = {"out", "max_steps", "max_minutes", "epochs", "resume", "overwrite", "log_every", "ckpt_every",
                        "ckpt_minutes", "num_workers", "num_threads", "check_ddp_sync", "export", "dry_run", "gpu_mem",
                        "seq_len", "allow_changed_data", "trust_remote_code", "grad_ckpt", "eval_every"}
DATA_FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "official_val.jsonl", "meta.json")


def absolute_dirs(spec):
    """'a,b' (as given, relative to the working folder) -> 'ABS_A,ABS_B'."""
    return ",".join(os.path.abspath(d) for d in spec.split(",") if d)


def data_fingerprint(spec):
    """{absolute folder: {file: [size, sha256]}} of the split files and meta.json of each folder in `spec`."""
    out = {}
    for folder in absolute_dirs(spec).split(","):
        files = {}
        for name in DATA_FILES:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                files[name] = [os.path.getsize(path), file_digest(path)]
        out[folder] = files
    return out


def data_changes(recorded):
    """What differs between a run's recorded fingerprint and its data folders now: ['FOLDER/FILE: how', ...]."""
    now = data_fingerprint(",".join(recorded))
    changes = []
    for folder, files in recorded.items():
        for name in sorted(set(files) | set(now[folder])):
            was, is_ = files.get(name), now[folder].get(name)
            if was != is_:
                how = "removed" if is_ is None else "added" if was is None else "rewritten"
                changes.append(f"{os.path.join(folder, name)}: {how}")
    return changes


def check_data(recorded, who, allow_changed=False, say=print):
    """A run's data must be what it was trained on: a change is an error, or a warning with allow_changed."""
    changes = data_changes(recorded or {})
    if not changes:
        return
    message = (f"{who}: the run's data changed since it was trained ({'; '.join(changes[:4])}"
               f"{'; ...' if len(changes) > 4 else ''}): a new prepare draws other splits, so a test image may have been "
               f"trained on")
    if not allow_changed:
        raise SystemExit(message + "; prepare it as it was, or go on anyway with --allow_changed_data true")
    say("warning: " + message + " (--allow_changed_data true: going on)")


def resume_changes(before, now, defaults=None):
    """['--key OLD -> NEW', ...] for every setting a resume may not change. A key the run's config.json lacks counts as
    its default (a run made before the key existed); set otherwise, it is a change."""
    def norm(key, value):
        return absolute_dirs(value) if key in ("data", "init", "interpret_val") and isinstance(value, str) else value
    keys = set(now) - MAY_CHANGE_ON_RESUME
    missing = object()
    out = []
    for k in sorted(keys):
        was = before.get(k, missing)
        if was is missing and defaults is not None and k in defaults and norm(k, defaults[k]) == norm(k, now[k]):
            continue
        if was is missing or norm(k, was) != norm(k, now[k]):
            out.append(f"--{k} {'(absent)' if was is missing else repr(was)} -> {now[k]!r}")
    return out


def is_run(out):
    """What makes `out` a run: its files, its link, its checkpoint folders (a marker alone is a run that failed before
    its first save: a plain retry may go ahead)."""
    names = os.listdir(out) if os.path.isdir(out) else []
    return [n for n in names if n in RUN_FILES or n == "current" or CHECKPOINT_NAME.match(n)]


def relink(out):
    """A run copied without its symlinks (rsync -r, a cloud sync): point OUT/current and OUT/<file> at its newest
    complete checkpoint folder again. -> that folder's name, or None when the links are there."""
    if os.path.islink(os.path.join(out, "current")):
        return None
    if os.path.lexists(os.path.join(out, "current")):
        raise SystemExit(f"train.py: --resume: {os.path.join(out, 'current')} is a folder, not the link train.py writes "
                         f"(a copy that followed links?); move it away and resume again: the newest checkpoint folder "
                         f"is taken")
    done = sorted(n for n in os.listdir(out) if CHECKPOINT_NAME.match(n) and not n.endswith(".partial")
                  and all(os.path.isfile(os.path.join(out, n, f)) for f in RUN_FILES))
    if not done:
        return None
    for name in LINKED:
        path = os.path.join(out, name)
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(os.path.join("current", name), path)
    os.symlink(done[-1], os.path.join(out, "current"))
    fsync_dir(out)
    return done[-1]


def claim_run(out, data, resume, overwrite):
    """train.py's rank 0, before the model loads: OUT is locked, checked and marked. A folder that holds a run needs
    --resume or --overwrite; --overwrite removes the run's own files and checkpoint folders and its evaluations (a
    user's checkpoint-keep stays); a prepared data folder, or one of the run's --data folders, is never an --out."""
    real = os.path.realpath(out)
    if real in {os.path.realpath(d) for d in data.split(",") if d}:
        raise SystemExit(f"train.py: --out {out} is a --data folder; a run goes into a folder of its own")
    if os.path.isfile(os.path.join(out, PREPARED)):
        raise SystemExit(f"train.py: --out {out} is a data folder prepare_data.py wrote; choose another --out")
    folder_lock(out, "train.py")  # two runs into one folder, or a prepare or an evaluation there: refused
    check_writable(out, "train.py")  # made if new; an unwritable --out fails now, not at the first save hours later
    held = is_run(out)
    if held and not resume and not overwrite:
        raise SystemExit(f"train.py: --out {out} holds a run ({', '.join(sorted(held)[:4])}); continue it with --resume "
                         f"true, replace it with --overwrite true, or choose another --out")
    if overwrite:
        for name in os.listdir(out):
            path = os.path.join(out, name)
            if (CHECKPOINT_NAME.match(name) or name == EVAL_DIR) and os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif name in LINKED or name in ("loss.png", "current"):
                os.unlink(path)
    if resume:
        fixed = relink(out)
        if fixed:
            print(f"--resume: {out} had no links (a copy?); relinked to its newest checkpoint, {fixed}")
        if not os.path.isfile(os.path.join(out, "resume.pt")):
            raise SystemExit(f"train.py: --resume: {os.path.join(out, 'resume.pt')} not found (a run folder written by "
                             f"train.py holds it)")
    atomic_write_json(os.path.join(out, RUN_MARK), {"written_by": "train.py"})


def read_resume(out, config, world_size, allow_changed_data, say=print, defaults=None):
    """The checks of --resume that need no model: the settings and the data are the run's, resume.pt is
    readable, with every entry train.py writes. -> its state (memory-mapped: read once, moved to the device by the
    optimizer)."""
    import torch
    before = read_json(os.path.join(out, "config.json"))
    changed = resume_changes(before, {**config, "world_size": world_size}, {**(defaults or {}), "world_size": 1})
    if changed:
        raise SystemExit(f"train.py: --resume {out}: the run was made with other settings ({'; '.join(changed)}); "
                         f"resume with its own, or start a new run (--out DIR, or --overwrite true)")
    check_data(before.get("data_fingerprint"), f"train.py: --resume {out}", allow_changed_data, say)
    path = os.path.join(out, "resume.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:  # noqa: BLE001 - truncated, or not a torch file
        raise SystemExit(f"train.py: --resume: cannot read {path} ({type(e).__name__}: {e})") from None
    lacking = [k for k in ("optimizer", "step", "epoch", "batch_in_epoch", "elapsed_min", "log")
               if not isinstance(state, dict) or k not in state]
    if lacking:
        raise SystemExit(f"train.py: --resume: {path} lacks {', '.join(lacking)} (not a resume.pt train.py wrote)")
    return state


def save_run(out, model, keep, optimizer, progress, log, run_config, rng, ddp, world_size, master, who, saved_step):
    """One checkpoint of a training run (train.py, train_grpo.py), swapped into OUT whole (common.write_checkpoint):
    trainable.safetensors (the tensors that train, and those named in `keep`: --init's), resume.pt (the optimizer,
    `progress` (step, epoch, ...), the log and every rank's random state `rng`), log.jsonl and config.json. Every rank
    calls it (FSDP's full_tensor and the gather of the random states are collectives); rank 0 writes. A disk that fails
    leaves the last checkpoint current and stops the run with what to do."""
    import io
    import json
    import time

    import torch
    from safetensors.torch import save

    from iqa_vlm.common import CHECKPOINT_PREFIX, write_checkpoint
    # under FSDP each rank holds a shard: full_tensor() gathers it
    tensors = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().contiguous().cpu()
               for n, p in model.named_parameters() if p.requires_grad or n in keep}
    rngs = [None] * world_size
    if ddp:  # every rank's own draws, so each continues its own stream
        torch.distributed.all_gather_object(rngs, rng)
    else:
        rngs = [rng]
    if not master:
        return
    buf = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), **progress, "log": log, "rng": dict(enumerate(rngs))}, buf)
    step = progress["step"]
    try:
        write_checkpoint(out, {"trainable.safetensors": save(tensors), "resume.pt": buf.getvalue(),
                               "log.jsonl": "".join(json.dumps(r) + "\n" for r in log).encode(),
                               "config.json": (json.dumps(run_config, indent=2) + "\n").encode()},
                         f"{CHECKPOINT_PREFIX}{step:08d}-{time.time_ns()}")
    except OSError as e:  # a full or failing disk: the half-written folder is gone, the last checkpoint stays current
        raise SystemExit(f"{who}: saving step {step} to {out} failed ({e.strerror}); its last checkpoint (step "
                         f"{saved_step}) stays current: free space, then continue with --resume true") from None
