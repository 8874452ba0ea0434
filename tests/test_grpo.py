"""VisualQuality-R1's rewards and the GRPO objective (studies/grpo.py) against the authors' reward code, ported here as
the oracle (TianheWu/VisualQuality-R1 @ a16dcdb, src/open-r1-multimodal/src/open_r1/grpo_jsonl.py: accuracy_reward,
fidelity_reward, format_reward, extract_first_number, kept loop for loop), and against a direct computation by hand."""
import math
import random
import re

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
