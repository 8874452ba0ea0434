"""train.py on tiny members of other families: --lora, --export (reloads with from_pretrained alone), --dry_run,
--fsdp (two CPU processes)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from iqa_vlm.data import LEVELS, encode_prompts
from iqa_vlm.data import LEVEL_PREFIX
from iqa_vlm.studies.scoring import score_record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(*args):
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


@pytest.fixture(scope="module")
def score_data(tmp_path_factory):
    """A prepared scoring folder (train/test JSONL) over 16 random images."""
    d = tmp_path_factory.mktemp("score_data")
    os.makedirs(d / "images")
    rng = np.random.default_rng(0)
    recs = []
    for i in range(16):
        Image.fromarray((rng.random((48, 48, 3)) * 255).astype("uint8")).save(d / "images" / f"{i}.png")
        recs.append(score_record(f"t/{i}", f"images/{i}.png", LEVELS[i % 5], "t", str(i), mos=1 + i % 5))
    for split in ("train", "test"):
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (d / "meta.json").write_text("{}")
    return d


@pytest.mark.parametrize("model", ["tiny", "tiny:qwen2_vl"])
def test_lora_train_export_reload_same_logits(model, score_data, tmp_path):
    from transformers import AutoModelForImageTextToText
    from iqa_vlm.model import load_checkpoint
    out, hf = tmp_path / "run", tmp_path / "hf"
    sh("train.py", "config/demo.py", "--model", model, "--data", str(score_data), "--out", str(out), "--trainable", "projector,llm",
       "--lora", "4", "--max_steps", "3", "--batch_size", "4", "--lr", "1e-2", "--warmup_steps", "1", "--export", str(hf))
    cfg = json.load(open(out / "config.json"))
    assert cfg["lora"] == 4 and set(cfg["parts"]) == {"projector", "lora(llm)"}
    tuned, processor, _ = load_checkpoint(str(out))  # adapters re-injected, trained values loaded
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in tuned.named_parameters())  # training moved them
    exported = AutoModelForImageTextToText.from_pretrained(str(hf))  # no code from this repo needed
    assert not any("lora" in n for n, _ in exported.named_parameters())
    recs = [score_record("q", str(score_data / "images" / "0.png"), "good", "t", "0")]
    enc, _ = encode_prompts(processor, recs, answer_prefix=LEVEL_PREFIX)
    tuned.eval(), exported.eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(**enc).logits, tuned(**enc).logits, atol=1e-4, rtol=1e-4)


def test_dry_run_prints_parts_and_memory_without_weights():
    log = sh("train.py", "--dry_run", "true", "--model", "llava-onevision-0.5b", "--trainable", "encoder,projector,llm,head",
             "--batch_size", "2", "--gpu_mem", "48")
    assert "estimated GPU memory" in log and "fits a 48 GiB GPU: yes" in log
    total_params = int(next(l for l in log.splitlines() if l.startswith("total")).split()[2].replace(",", ""))
    assert 0.8e9 < total_params < 1.0e9  # LLaVA-OneVision 0.5B: SigLIP-400M + Qwen2-0.5B


def test_dry_run_arithmetic():
    """Weights 2 B frozen + 4 B trained, gradients 4 B, AdamW 8 B per trained parameter; activations only of the
    decoder layers the gradient crosses."""
    from iqa_vlm.memory_plan import estimate
    from iqa_vlm.model import load_model, set_trainable
    model, _ = load_model("tiny")
    n_all = sum(p.numel() for p in model.parameters())
    chosen = set_trainable(model, "llm:1-1", verbose=False)
    n_tr = sum(p.numel() for params in chosen.values() for p in params.values())
    est = estimate(model, chosen, batch_size=2, seq_len=100)
    assert est["weights"] == 2 * (n_all - n_tr) + 4 * n_tr and est["gradients"] == 4 * n_tr and est["optimizer"] == 8 * n_tr
    h, i = 64, 256  # the tiny model: hidden 64, MLP 256, 4 kv heads x 16
    assert est["decoder_layers_storing_activations"] == 1 and est["activations"] == 2 * (6 * h + 2 * h + 4 * i) * 200
    ckpt = estimate(model, set_trainable(model, "projector", verbose=False), 2, 100, grad_ckpt=True)
    assert ckpt["decoder_layers_storing_activations"] == 2 and ckpt["activations"] == 2 * (2 * h) * 200 + 2 * (6 * h + 2 * h + 4 * i) * 200


@pytest.mark.slow
def test_fsdp_two_cpu_processes(score_data, tmp_path):
    out = tmp_path / "fsdp"
    log = sh("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", "config/demo.py", "--data", str(score_data),
             "--out", str(out), "--fsdp", "true", "--trainable", "projector,llm:1-1", "--max_steps", "2", "--batch_size", "2")
    assert "done: 2 steps" in log
    from safetensors.torch import load_file
    tensors = load_file(out / "trainable.safetensors")
    assert any(k.startswith("model.language_model.layers.1.") for k in tensors)
    from iqa_vlm.model import load_model
    full = dict(load_model("tiny")[0].named_parameters())
    assert all(tuple(v.shape) == tuple(full[k].shape) for k, v in tensors.items())  # gathered, not shards
    # and trained: the optimizer holds the sharded parameters FSDP2 put in place of the originals
    assert all((v - full[k].detach()).abs().max() > 0 for k, v in tensors.items())
