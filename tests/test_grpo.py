"""VisualQuality-R1's and Q-Insight's rewards and the GRPO objective (studies/grpo.py) against the authors' reward code,
ported here as the oracle (TianheWu/VisualQuality-R1 @ a16dcdb, src/open-r1-multimodal/src/open_r1/grpo_jsonl.py:
accuracy_reward, fidelity_reward, format_reward, extract_first_number; bytedance/Q-Insight @ 08308fd,
src/open-r1-multimodal/src/open_r1/qinsight_multi_task.py: score_reward, format_reward; kept loop for loop), and
against a direct computation by hand. Then the rollout's log-probs, the reference under LoRA, and train_grpo.py's run,
resume and dry run, evaluate.py sampled-score."""
import json
import math
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from iqa_vlm.studies import grpo as G


# ----------------------------------------------------------------------------- the oracle: the authors' functions
def oracle_extract_first_number(model_answer):
    match = re.search(r'-?\d+(\.\d+)?', model_answer)
    if match:
        return float(match.group())
    return random.randint(1, 5)


def oracle_fidelity_reward(pred1, pred2, var1, var2, gt):
    esp = 1e-6
    normal_dist = torch.distributions.Normal(0, 1)
    _cur = (pred1 - pred2) / torch.sqrt(var1 + var2 + esp)
    p = normal_dist.cdf(_cur)
    return torch.sqrt(p * gt + esp) + torch.sqrt((1 - p) * (1 - gt) + esp)


def oracle_accuracy_reward(contents, solutions, n_gen):
    reshaped_solution = [solutions[i:i + n_gen] for i in range(0, len(solutions), n_gen)]
    for i in range(len(reshaped_solution)):
        for j in range(len(reshaped_solution[i])):
            sol_match = re.search(r'<answer>(.*?)</answer>', reshaped_solution[i][j])
            reshaped_solution[i][j] = float(sol_match.group(1).strip())
    reshaped_content = [contents[i:i + n_gen] for i in range(0, len(contents), n_gen)]
    batch_mean, batch_var, batch_pred = [], [], []
    for i in range(len(reshaped_content)):
        cur_pred_list = []
        for j in range(len(reshaped_content[i])):
            content_matches = re.findall(r'<answer>(.*?)</answer>', reshaped_content[i][j], re.DOTALL)
            student_answer = content_matches[-1].strip() if content_matches else reshaped_content[i][j].strip()
            cur_pred_list.append(oracle_extract_first_number(student_answer))
        batch_pred.append(cur_pred_list)
        p = torch.tensor(cur_pred_list, dtype=torch.float32)
        batch_mean.append([torch.mean(p)])
        batch_var.append([torch.var(p)])
    rewards = []
    for i in range(len(batch_pred)):
        for j in range(len(batch_pred[i])):
            _reward_sum, _count_idx = 0, 0
            for z in range(len(batch_mean)):
                if z != i:
                    if reshaped_solution[i][j] > reshaped_solution[z][0]:
                        gt = torch.tensor(1.0)
                    elif reshaped_solution[i][j] < reshaped_solution[z][0]:
                        gt = torch.tensor(0.0)
                    else:
                        gt = torch.tensor(0.5)
                    _reward_sum = _reward_sum + oracle_fidelity_reward(batch_pred[i][j], batch_mean[z][0], batch_var[i][0],
                                                                       batch_var[z][0], gt)
                    _count_idx += 1
            rewards.append(_reward_sum / _count_idx)
    return rewards


def oracle_format_reward(contents):
    pattern = r"<think>.*?</think>\s*<answer>.*?</answer>"
    return [1.0 if re.fullmatch(pattern, c, re.DOTALL) else 0.0 for c in contents]


# ----------------------------------------------------------------------------- random cases
def completion(rng, score):
    kind = rng.integers(0, 5)
    if kind == 0:
        return f"<think>looks {'sharp' if score > 3 else 'blurry'}\nokay</think>\n<answer>{score:.2f}</answer>"
    if kind == 1:
        return f"<think>x</think><answer>The score is {score:.2f} out of 5</answer>"
    if kind == 2:
        return f"I would say {score:.1f}, maybe {score + 1:.1f}"  # no tags: the first number in the text
    if kind == 3:
        return f"<think>a</think> <answer>{score + 0.5:.2f}</answer> then <answer>{score:.2f}</answer> trailing"
    return f"<answer>{score:.3f}</answer>"


@pytest.mark.parametrize("seed", range(6))
def test_ranking_and_format_rewards_equal_the_authors_code(seed):
    rng = np.random.default_rng(seed)
    n, g = int(rng.integers(2, 6)), int(rng.integers(2, 7))
    mos = [round(float(x), 2) for x in rng.uniform(1, 5, n)]
    if seed % 2:
        mos[1] = mos[0]  # a tie: 0.5
    contents = [completion(rng, float(rng.uniform(1, 5))) for _ in range(n * g)]
    solutions = [f"<answer> {mos[i]} </answer>" for i in range(n) for _ in range(g)]
    want = torch.stack([torch.as_tensor(r, dtype=torch.float32) for r in oracle_accuracy_reward(contents, solutions, g)])
    preds, unparsed = G.parse_scores(contents, np.random.default_rng(0))
    assert unparsed == 0
    got = G.ranking_rewards(torch.tensor(preds).view(n, g), mos).flatten()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(G.format_rewards(contents), torch.tensor(oracle_format_reward(contents)))


def test_unparsed_answers_are_random_integers_and_counted():
    scores, unparsed = G.parse_scores(["<answer>good</answer>", "no number", "<answer>3.5</answer>"],
                                      np.random.default_rng(1))
    assert unparsed == 2 and scores[2] == 3.5 and all(s in (1.0, 2.0, 3.0, 4.0, 5.0) for s in scores[:2])


def test_ranking_reward_by_hand():
    """Two images, two samples each: image 0 scored (4, 2), image 1 (3, 3); image 0 has the higher MOS."""
    r = G.ranking_rewards([[4.0, 2.0], [3.0, 3.0]], [4.2, 2.0])
    v0, v1 = 2.0, 0.0  # unbiased variances
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))
    e = 1e-6
    p = phi((4 - 3) / math.sqrt(v0 + v1 + e))  # sample (0, 0) against image 1's mean 3: g = 1
    assert r[0, 0].item() == pytest.approx(math.sqrt(p + e) + math.sqrt(e), abs=1e-6)
    p = phi((3 - 3) / math.sqrt(v1 + v0 + e))  # sample (1, 0) against image 0's mean 3: g = 0
    assert r[1, 0].item() == pytest.approx(math.sqrt(e) + math.sqrt(1 - p + e), abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        G.ranking_rewards([[1.0, 2.0]], [3.0])


def test_grpo_loss_on_a_hand_sized_case():
    """Two completions of 2 and 3 tokens (the second padded to 3): advantages, ratio clipping, the k3 KL, and the
    per-completion token mean, computed term by term."""
    rewards = torch.tensor([[1.0, 0.0, 0.5]])
    adv = G.group_advantages(rewards)[0]
    std = math.sqrt(((1 - 0.5) ** 2 + 0.5 ** 2 + 0) / 2)
    assert adv.tolist() == pytest.approx([0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.0], abs=1e-6)
    logps = torch.tensor([[-1.0, -0.5, -9.0], [-2.0, -0.1, -0.3]])
    old = torch.tensor([[-1.3, -0.5, -9.0], [-1.0, -0.1, -0.5]])
    ref = torch.tensor([[-1.1, -0.4, 0.0], [-2.0, -0.2, -0.3]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    a = torch.tensor([1.0, -2.0])
    loss, stats = G.grpo_loss(logps, old, ref, a, mask, beta=0.1, eps_low=0.2)
    want, clipped = [], 0
    for b in range(2):
        terms = []
        for t in range(int(mask[b].sum())):
            ratio = math.exp(logps[b, t] - old[b, t])
            unclipped, cl = ratio * a[b].item(), min(max(ratio, 0.8), 1.2) * a[b].item()
            clipped += unclipped < cl
            d = (ref[b, t] - logps[b, t]).item()
            terms.append(-min(unclipped, cl) + 0.1 * (math.exp(d) - d - 1))
        want.append(sum(terms) / len(terms))
    assert loss.item() == pytest.approx(sum(want) / 2, abs=1e-6)
    assert stats["clip_ratio"] == pytest.approx(clipped / 5)
    no_kl, stats = G.grpo_loss(logps, old, None, a, mask, beta=0.0)
    assert "kl" not in stats and no_kl.item() < loss.item() + 1  # finite without a reference model


def test_the_prompt_is_the_released_one():
    text = G.VQR1_TEMPLATE.format(Question=G.VQR1_QUESTION)
    assert text.startswith("You are doing the image quality assessment task. Here is the question: What is your overall")
    assert text.endswith("output the final answer with only one score in <answer> </answer> tags.")


# ----------------------------------------------------------------------------- Q-Insight: the oracle
def oracle_qinsight_score_reward(contents, solution, task, threshold=0.35):
    answer_tag_pattern = r'<answer>(.*?)</answer>'
    score_pattern = r'\"rating\"\s*:\s*([\d\.]+)'
    num_gen = len(task) // len(contents)
    subsampled_tasks, subsampled_solutions = task[::num_gen], solution[::num_gen]
    rewards = []
    for t, content, true_sol in zip(subsampled_tasks, contents, subsampled_solutions):
        reward = 0.0
        try:
            match_answer = re.search(answer_tag_pattern, content, re.DOTALL)
            if match_answer:
                answer_content = match_answer.group(1).strip()
                if t == 'score':
                    match_score = re.search(score_pattern, answer_content)
                    if match_score:
                        model_score = float(match_score.group(1))
                        if abs(model_score - true_sol) < threshold:
                            reward = 1.0
        except Exception:
            pass
        rewards.append(reward)
    return rewards


def oracle_qinsight_format_reward(contents):
    pattern = (r"^<think>\s*\n" r".*?\n" r"\s*</think>\s*\n" r"<answer>\s*\n" r"\{[^\{\}]*\}" r"\s*\n" r"\s*</answer>\s*$")
    return [1.0 if re.fullmatch(pattern, c, re.DOTALL | re.MULTILINE) else 0.0 for c in contents]


def qinsight_completion(rng, score):
    kind = rng.integers(0, 7)
    if kind == 0:
        return f'<think>\nsharp enough\n</think>\n<answer>\n{{"rating": {score:.2f}}}\n</answer>'
    if kind == 1:
        return f'<think> x </think><answer>{{"rating": {score:.2f}}}</answer>'  # no newlines: no format reward
    if kind == 2:
        return f'<think>\na\nb\n</think>\n<answer>\n{{"rating":{score:.1f}.}}\n</answer>'  # "3.5." is no float
    if kind == 3:
        return f'<answer>{{"rating": {score:.2f}}}</answer> and <answer>{{"rating": 1.0}}</answer>'  # the first counts
    if kind == 4:
        return f'<think>\nhmm\n</think>\n<answer>\n{{"rating": {{"v": {score}}}}}\n</answer>'  # nested: no format
    if kind == 5:
        return f"the rating is {score:.2f}"
    return f'<think>\nok\n</think>\n<answer>\n{{"rating": {score:.2f}, "note": "fine"}}  \n  </answer>  '


@pytest.mark.parametrize("seed", range(4))
def test_qinsight_rewards_equal_the_authors_code(seed):
    rng = np.random.default_rng(seed)
    mos = [float(m) for m in rng.uniform(1, 5, 24)]
    texts = [qinsight_completion(rng, float(np.clip(m + rng.normal(0, 0.4), 1, 5))) for m in mos]
    texts += ['<answer>{"rating": %.2f}</answer>' % (mos[0] + d) for d in (0.349, 0.35, -0.351)]  # the threshold's edge
    mos += [mos[0]] * 3
    ours = G.qinsight_score_rewards(texts, mos).tolist()
    assert ours == oracle_qinsight_score_reward(texts, mos, ["score"] * len(texts))
    assert G.qinsight_format_rewards(texts).tolist() == oracle_qinsight_format_reward(texts)
    assert 0 < sum(ours) < len(ours) and 0 < sum(G.qinsight_format_rewards(texts).tolist()) < len(texts)


def test_batch_rewards_sum_the_parts_as_their_trainers_do():
    texts = ["<think>a</think><answer>4</answer>", "<think>a</think><answer>2</answer>", "no score", "<answer>3</answer>"]
    total, parts, unparsed = G.batch_rewards("vqr1", texts, [4.0, 2.0], 2, np.random.default_rng(0))
    assert unparsed == 1 and total.shape == (2, 2) and set(parts) == {"ranking", "format"}
    assert torch.allclose(total.sum(), torch.tensor(sum(parts.values()) * 4))
    q = ['<think>\nx\n</think>\n<answer>\n{"rating": 4.1}\n</answer>', "nothing"]
    total, parts, unparsed = G.batch_rewards("qinsight", q, [4.0], 2, np.random.default_rng(0))
    assert total.tolist() == [[2.0, 0.0]] and unparsed == 1
    with pytest.raises(ValueError, match="unknown reward"):
        G.batch_rewards("dpo", q, [4.0], 2, np.random.default_rng(0))


def test_completion_mask_ends_at_the_first_stop():
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 5, 5, 5, 5], [2, 0, 0, 0, 0]])
    assert G.completion_mask(ids, [2]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert G.completion_mask(ids, [9, 6]).tolist()[0] == [1, 1, 0, 0, 0]


# ----------------------------------------------------------------------------- rollout and log-probs on tiny models
@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image
    d = tmp_path_factory.mktemp("grpo_images")
    recs = []
    for i, (w, h) in enumerate([(40, 32), (64, 48), (32, 56)]):  # sizes differ: anyres / Qwen rows get padded
        a = (np.random.default_rng(i).random((h, w, 3)) * 255).astype("uint8")
        Image.fromarray(a).save(d / f"{i}.png")
        recs.append({"id": str(i), "image": str(d / f"{i}.png")})
    return recs


@pytest.mark.parametrize("name", ["tiny:tags", "tiny:qwen2_5_vl", "tiny:llava_onevision", "tiny:mplug_owl2"])
def test_completion_logps_equal_each_row_alone(name, images):
    """The batched, left-padded forward of prompt + completion gives each sampled token the log-prob a plain
    full-softmax forward of that row alone (no padding) gives."""
    from iqa_vlm.model import backbone, load_model, lm_readout
    torch.manual_seed(0)
    model, processor = load_model(name)
    model.eval()
    q = "how would you rate the quality of this image ?"
    enc, comp, mask, texts = G.rollout(model, processor, images, q, 2, 6)
    assert comp.shape[0] == 6 and len(texts) == 6
    logps = G.completion_logps(model, enc, comp, mask)
    assert (logps[mask == 0] == 0).all()
    for b in range(comp.shape[0]):
        n = int(mask[b].sum())
        one, _ = G.encode_prompts(processor, [G.prompt_record(images[b // 2], q)], padding_side="left")
        inputs, p = G.completion_inputs(model, one, comp[b:b + 1, :n], mask[b:b + 1, :n])
        with torch.no_grad():
            h = backbone(model)(**inputs).last_hidden_state[0, p - 1:-1].double()
            ref = torch.log_softmax(lm_readout(model)[1].double()(h), -1).gather(1, comp[b, :n, None])[:, 0]
        torch.testing.assert_close(logps[b, :n].double(), ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("name", ["tiny:qwen2_5_vl", "tiny:llava_onevision"])
def test_a_chunk_of_rows_gives_those_rows_log_probs(name, images):
    """--completion_chunk: rows a..b of a rollout (Qwen's flattened pixel rows cut by image_grid_thw) give the full
    batch's log-probs of those rows."""
    from iqa_vlm.model import load_model
    torch.manual_seed(0)
    model, processor = load_model(name)
    model.eval()
    enc, comp, mask, _ = G.rollout(model, processor, images, "rate it", 2, 5)
    with torch.no_grad():
        full = G.completion_logps(model, enc, comp, mask)
        for sl in (slice(0, 2), slice(2, 5), slice(5, 6)):
            part = G.completion_logps(model, G.row_slice(enc, 6, sl), comp[sl], mask[sl])
            torch.testing.assert_close(part, full[sl], atol=2e-5, rtol=0)


def test_completion_logps_gradient_equals_plain_log_softmax(images):
    """The fused op's in-place backward gives the same parameter gradients as autograd through log_softmax."""
    from iqa_vlm.model import backbone, load_model, lm_readout
    torch.manual_seed(1)
    model, processor = load_model("tiny:tags")
    enc, comp, mask, _ = G.rollout(model, processor, images[:2], "rate it", 3, 5)
    adv = torch.randn(comp.shape[0])
    grads = []
    for fused in (True, False):
        model.zero_grad()
        if fused:
            logps = G.completion_logps(model, enc, comp, mask)
        else:
            inputs, p = G.completion_inputs(model, enc, comp, mask)
            h = backbone(model)(**inputs).last_hidden_state[:, p - 1:-1]
            logps = torch.log_softmax(lm_readout(model)[1](h), -1).gather(2, comp[..., None])[..., 0] * mask
        loss, _ = G.grpo_loss(logps, logps.detach(), None, adv, mask, beta=0.0)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    scale = max(g.abs().max().item() for g in grads[1].values())  # fp32 sums in another order: against the largest
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n] / scale, grads[1][n] / scale, atol=1e-5, rtol=0)


def test_reference_weights_is_the_starting_model(images):
    """Under --lora the reference is the model with its adapters off and the fully trained tensors at their start."""
    from iqa_vlm.model import load_model, set_trainable
    model, processor = load_model("tiny:tags")
    set_trainable(model, "projector,llm", verbose=False, lora=4)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n}
    enc, comp, mask, _ = G.rollout(model, processor, images[:2], "rate it", 2, 5)
    with torch.no_grad():
        before = G.completion_logps(model, enc, comp, mask)
        for p in model.parameters():  # a "trained" model: adapters and projector moved
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
        moved = G.completion_logps(model, enc, comp, mask)
        with G.reference_weights(model, start):
            ref = G.completion_logps(model, enc, comp, mask)
        after = G.completion_logps(model, enc, comp, mask)
    assert (moved - before).abs().max() > 1e-3
    torch.testing.assert_close(ref, before, atol=1e-6, rtol=0)
    torch.testing.assert_close(after, moved, atol=0, rtol=0)
    assert all(p.requires_grad for n, p in model.named_parameters() if ".lora_" in n)


# ----------------------------------------------------------------------------- train_grpo.py and evaluate.py
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(*args, ok=True):
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert (r.returncode == 0) == ok, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def grpo_data(tmp_path_factory):
    """A prepared score folder of 24 images from two sources, MOS rising with brightness."""
    from PIL import Image
    from iqa_vlm.studies.scoring import score_record
    d = tmp_path_factory.mktemp("grpo_data")
    os.makedirs(d / "images")
    rng = np.random.default_rng(0)
    recs = []
    for i in range(24):
        Image.fromarray((rng.random((32, 32, 3)) * 40 + i * 8).astype("uint8")).save(d / "images" / f"{i}.png")
        recs.append(score_record(f"s{i % 2}/{i}", f"images/{i}.png", "fair", f"s{i % 2}", str(i), mos=1 + i / 6,
                                 mos_norm=i / 23))
    for split in ("train", "test"):
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (d / "meta.json").write_text("{}")
    return d


def test_format_then_grpo_resume_and_sampled_score(grpo_data, tmp_path):
    fmt, run, split = tmp_path / "fmt", tmp_path / "r1", tmp_path / "r1_split"
    # the whole model learns the format in 40 steps (the demo's head-only warm start needs its 150)
    sh("train_grpo.py", "config/grpo_demo_format.py", "--data", str(grpo_data), "--out", str(fmt), "--max_steps", "40",
       "--batch_size", "8", "--log_every", "40", "--trainable", "encoder,projector,llm,head")
    common = ["config/grpo_demo.py", "--data", str(grpo_data), "--init", str(fmt), "--batch_size", "4",
              "--trainable", "encoder,projector",
              "--num_generations", "3", "--eval_limit", "8", "--eval_k", "1", "--log_every", "1", "--lr", "1e-2"]
    out = sh("train_grpo.py", *common, "--out", str(run), "--max_steps", "4")
    log = [json.loads(line) for line in open(run / "log.jsonl")]
    steps = [r for r in log if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and all(r["reward_format"] > 0.5 for r in steps), out
    assert all(0 < r["reward_ranking"] < 1.42 for r in steps) and "held-out SRCC" in out
    assert [r["step"] for r in log if "eval_srcc" in r] == [0, 4]
    cfg = json.load(open(run / "config.json"))
    assert cfg["finished"] and cfg["steps_done"] == 4 and cfg["model"] == "tiny:tags" and os.path.isfile(run / "grpo.png")
    # 2 steps, then --resume to 4: the same tensors as the uninterrupted run (sampling's RNG streams are saved too)
    sh("train_grpo.py", *common, "--out", str(split), "--max_steps", "2")
    sh("train_grpo.py", *common, "--out", str(split), "--max_steps", "4", "--resume", "true")
    from safetensors.torch import load_file
    a, b = load_file(run / "trainable.safetensors"), load_file(split / "trainable.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    # the run scored by sampled answers, with the share of answers without a score
    out = sh("evaluate.py", "sampled-score", "--ckpt", str(run), "--k", "2", "--limit", "6", "--bootstrap", "0",
             "--max_new_tokens", "16")
    res = json.load(open(run / "eval" / "limit6" / "eval_sampled_score.json"))
    assert res["k"] == 2 and res["answers"] == 12 and 0 <= res["answers_without_score"] <= 12 and res["reward"] == "vqr1"
    assert set(res["per_source"]) == {"s0", "s1", "all"} and res["per_source"]["all"]["n"] == 6


def test_lora_and_qinsight_run(grpo_data, tmp_path):
    out = sh("train_grpo.py", "--model", "tiny:tags", "--data", str(grpo_data), "--out", str(tmp_path / "q"),
             "--reward", "qinsight", "--trainable", "projector,llm", "--lora", "4", "--batch_size", "2",
             "--num_generations", "2", "--max_steps", "2", "--max_completion_length", "8", "--eval_limit", "4",
             "--grad_ckpt", "false", "--completion_chunk", "2")
    cfg = json.load(open(tmp_path / "q" / "config.json"))
    assert cfg["lora"] == 4 and cfg["reward"] == "qinsight" and "reward_score" in open(tmp_path / "q" / "log.jsonl").read()
    assert "step     2" in out


def test_arguments_are_checked_at_the_door(grpo_data, tmp_path):
    out = sh("train_grpo.py", "--data", str(grpo_data), "--out", str(tmp_path / "x"), "--reward", "dpo", ok=False)
    assert "--reward must be one of vqr1, qinsight" in out
    out = sh("train_grpo.py", "--data", str(grpo_data), "--out", str(tmp_path / "x"), "--batch_size", "1", ok=False)
    assert "ranks the images of a batch" in out


@pytest.mark.parametrize("cfg", ["config/visualquality_r1_qwen25vl.py", "config/visualquality_r1_qwen3vl.py"])
def test_recipe_dry_runs_fit_one_a6000(cfg):
    preset = "qwen2.5-vl-7b" if "qwen25" in cfg else "qwen3-vl-8b"
    out = sh("train_grpo.py", cfg, "--model", preset, "--dry_run", "true")
    assert "fits a 48 GiB GPU: yes" in out and "8 images x 6 answers" in out and "reference" in out


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--lora", "4", "--trainable", "projector,llm", "--completion_chunk", "2"]],
                         ids=["full", "lora"])
def test_ddp_and_fsdp_two_cpu_processes_train_alike(grpo_data, tmp_path, extra):
    """torchrun with 2 processes: DDP and FSDP2 (whose root is gathered for generation) take the same steps; with
    --lora too (FSDP keeps a copy as the reference, DDP switches the adapters off)."""
    from safetensors.torch import load_file
    from iqa_vlm.model import load_model
    logs, tensors = {}, {}
    for fsdp in ("false", "true"):
        out = tmp_path / f"fsdp_{fsdp}"
        sh("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train_grpo.py", "--model", "tiny:tags",
           "--data", str(grpo_data), "--out", str(out), "--batch_size", "2", "--num_generations", "2", "--max_steps", "2",
           "--eval_limit", "4", "--max_completion_length", "6", "--grad_ckpt", "false", "--lr", "1e-3", "--fsdp", fsdp,
           *extra)
        logs[fsdp] = [r for r in map(json.loads, open(out / "log.jsonl")) if "reward" in r]
        tensors[fsdp] = load_file(out / "trainable.safetensors")
    assert [r["step"] for r in logs["true"]] == [1, 2] and logs["true"][1]["kl"] > 0  # the second step's policy moved
    for a, b in zip(logs["false"], logs["true"]):
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-5) and a["kl"] == pytest.approx(b["kl"], rel=1e-3, abs=1e-6)
    if not extra:
        full = dict(load_model("tiny:tags")[0].named_parameters())
        assert all(tuple(v.shape) == tuple(full[k].shape) for k, v in tensors["true"].items())  # gathered, not shards
    for k in tensors["false"]:
        torch.testing.assert_close(tensors["true"][k], tensors["false"][k], atol=1e-5, rtol=1e-4)
