"""Reinforcement learning to rank (VisualQuality-R1, Wu et al., arXiv 2505.14460): its prompt, answer parsing, rewards,
and the GRPO objective, as its released code (TianheWu/VisualQuality-R1, src/open-r1-multimodal) computes them.

    from iqa_vlm.studies import grpo
    text = grpo.VQR1_TEMPLATE.format(Question=grpo.VQR1_QUESTION)               # the user turn, after the image
    preds, unparsed = grpo.parse_scores(completions, rng)                        # one score per sampled answer
    rewards = grpo.ranking_rewards(preds, mos) + grpo.format_rewards(completions) # [images, G] each
    loss = grpo.grpo_loss(logps, old_logps, ref_logps, grpo.group_advantages(rewards), mask, beta=0.04)

Ranking reward, for image i of a batch (all from one dataset) with G sampled scores q_i1..q_iG, their mean m_i and
unbiased variance v_i: sample j is rewarded, averaged over every other image z of the batch,
    p  = Phi((q_ij - m_z) / sqrt(v_i + v_z + 1e-6))                 Thurstone's probability that i beats z
    g  = 1 if mos_i > mos_z, 0 if below, 0.5 if equal
    r  = sqrt(p g + 1e-6) + sqrt((1 - p)(1 - g) + 1e-6)              the fidelity of p against g
Format reward: 1 if the whole completion is `<think>...</think>` then `<answer>...</answer>` (whitespace between),
else 0. An answer's score is the first number inside its last <answer>...</answer> (or in the whole text); an answer
without a number gets a random integer 1..5, as theirs does, and is counted.
GRPO (their trainer, num_iterations 1): advantages (r - mean_G) / (std_G + 1e-4) per image (unbiased std); per token
-min(ratio A, clip(ratio, 1 - eps_low, 1 + eps_high) A) + beta (exp(ref - logp) - (ref - logp) - 1), averaged over each
completion's tokens, then over completions.
"""
import re

import torch

# The question of their training data (datasets/KADID-10K/scoring/RL-KADID-10K_train_scoring.jsonl, every record) and
# the scoring template their Qwen2-VL module puts around it (vlm_modules/qwen_module.py, get_question_template)
VQR1_QUESTION = ("You are doing the image quality assessment task. Here is the question: What is your overall rating on "
                 "the quality of this picture? The rating should be a float between 1 and 5, rounded to two decimal "
                 "places, with 1 representing very poor quality and 5 representing excellent quality.")
VQR1_TEMPLATE = ("{Question} First output the thinking process in <think> </think> tags and then output the final answer "
                 "with only one score in <answer> </answer> tags.")
FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
NUMBER = re.compile(r"-?\d+(\.\d+)?")
FIDELITY_EPS = 1e-6
ADVANTAGE_EPS = 1e-4


def parse_score(text):
    """The first number in the last <answer>...</answer> (or in the whole text when there is none), or None."""
    answers = ANSWER.findall(text)
    m = NUMBER.search(answers[-1].strip() if answers else text.strip())
    return float(m.group()) if m else None


def parse_scores(completions, rng):
    """Scores of a list of completions -> (scores, number unparsed); an unparsed answer scores rng.integers(1, 6)."""
    scores, unparsed = [], 0
    for text in completions:
        s = parse_score(text)
        if s is None:
            s, unparsed = float(rng.integers(1, 6)), unparsed + 1
        scores.append(s)
    return scores, unparsed


def format_rewards(completions):
    return torch.tensor([1.0 if FORMAT.fullmatch(t) else 0.0 for t in completions])


def ranking_rewards(preds, mos):
    """preds [N, G] sampled scores of N images of one dataset, mos [N] -> rewards [N, G] (the module's formula)."""
    preds = torch.as_tensor(preds, dtype=torch.float32)
    mos = torch.as_tensor(mos, dtype=torch.float32)
    n = preds.shape[0]
    if n < 2:
        raise ValueError("the ranking reward compares images: a batch needs at least 2")
    mean, var = preds.mean(1), preds.var(1)  # var: unbiased, as torch.var
    p = torch.distributions.Normal(0.0, 1.0).cdf(
        (preds[:, :, None] - mean[None, None, :]) / torch.sqrt(var[:, None, None] + var[None, None, :] + FIDELITY_EPS))
    g = (mos[:, None] > mos[None, :]).float() + 0.5 * (mos[:, None] == mos[None, :]).float()  # [i, z]
    g = g[:, None, :]
    r = torch.sqrt(p * g + FIDELITY_EPS) + torch.sqrt((1 - p) * (1 - g) + FIDELITY_EPS)  # [i, j, z]
    others = ~torch.eye(n, dtype=torch.bool)[:, None, :]
    return (r * others).sum(-1) / (n - 1)


def group_advantages(rewards):
    """rewards [N, G] -> advantages [N, G]: each reward against its group's mean and (unbiased) std."""
    return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + ADVANTAGE_EPS)


def grpo_loss(logps, old_logps, ref_logps, advantages, mask, beta=0.04, eps_low=0.2, eps_high=None):
    """The clipped GRPO objective with the k3 KL estimator. logps, old_logps, ref_logps, mask: [B, T] per completion
    token (ref_logps may be None when beta is 0); advantages [B]. -> (loss, {kl, clip_ratio})."""
    eps_high = eps_low if eps_high is None else eps_high
    ratio = torch.exp(logps - old_logps)
    a = advantages[:, None]
    unclipped, clipped = ratio * a, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a
    per_token = -torch.min(unclipped, clipped)
    stats = {"clip_ratio": float(((unclipped < clipped).float() * mask).sum() / mask.sum())}
    if beta > 0:
        kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
        per_token = per_token + beta * kl
        stats["kl"] = float(((kl.detach() * mask).sum(1) / mask.sum(1)).mean())
    return ((per_token * mask).sum(1) / mask.sum(1)).mean(), stats
