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

Q-Insight (Li et al., arXiv 2503.22679; bytedance/Q-Insight @ 08308fd, src/open-r1-multimodal/src/open_r1/
qinsight_multi_task.py), its scoring task: a system prompt asking for the tags, a question asking for JSON
{"rating": x}; score reward 1 if |rating - MOS| < 0.35 (MOS on 1-5), else 0 (also when nothing parses); format
reward 1 if the completion is `<think>` newline ... newline `</think>` newline `<answer>` newline {one flat JSON
object} newline `</answer>`, else 0. Its degradation task (distortion class and severity) is not built here.
"""
import contextlib
import re

import torch

from iqa_vlm.data import encode_prompts
from iqa_vlm.level_ce import level_cross_entropy
from iqa_vlm.model import backbone, family_of, lm_readout, to_device

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
# Q-Insight's prompts and patterns (qinsight_multi_task.py: SYSTEM_PROMPT, SCORE_QUESTION_PROMPT, score_reward, format_reward)
QINSIGHT_SYSTEM = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
                   "assistant first thinks about the reasoning process in the mind and then provides the user with the "
                   "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
                   "tags, respectively, i.e., <think> reasoning process here </think><answer> answer here </answer>")
QINSIGHT_QUESTION = ("What is your overall rating on the quality of this picture? The rating should be a float between 1 "
                     "and 5, rounded to two decimal places, with 1 representing very poor quality and 5 representing "
                     'excellent quality. Return the final answer in JSON format with the following keys: "rating": The '
                     "score.")
QINSIGHT_FORMAT = re.compile(r"^<think>\s*\n.*?\n\s*</think>\s*\n<answer>\s*\n\{[^\{\}]*\}\s*\n\s*</answer>\s*$",
                             re.DOTALL | re.MULTILINE)
RATING = re.compile(r'"rating"\s*:\s*([\d\.]+)')
QINSIGHT_THRESHOLD = 0.35  # their --score_reward_threshold
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


def parse_rating(text):
    """Q-Insight's reading: the "rating" number of the first <answer>...</answer>, or None."""
    m = ANSWER.search(text)
    r = RATING.search(m.group(1).strip()) if m else None
    try:
        return float(r.group(1)) if r else None
    except ValueError:  # "3.5." matches [\d.]+ but is no float: their reward catches it as 0
        return None


def qinsight_score_rewards(completions, mos, threshold=QINSIGHT_THRESHOLD):
    """[len(completions)] 1 where the parsed rating is within `threshold` of the MOS (1-5, one per completion), else 0."""
    ratings = [parse_rating(t) for t in completions]
    return torch.tensor([1.0 if r is not None and abs(r - m) < threshold else 0.0 for r, m in zip(ratings, mos)])


def qinsight_format_rewards(completions):
    return torch.tensor([1.0 if QINSIGHT_FORMAT.fullmatch(t) else 0.0 for t in completions])


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


# Each reward recipe: its system prompt, its question, how an answer's score is read, its reward functions
REWARDS = {
    "vqr1": dict(system="", question=VQR1_TEMPLATE.format(Question=VQR1_QUESTION), parse=parse_score,
                 parts=("ranking", "format")),
    "qinsight": dict(system=QINSIGHT_SYSTEM, question=QINSIGHT_QUESTION, parse=parse_rating, parts=("score", "format")),
}


def batch_rewards(kind, texts, mos, num_generations, rng, threshold=QINSIGHT_THRESHOLD):
    """Rewards of one rollout: texts [N*G] record-major, mos [N] on 1-5. -> (rewards [N, G] (the parts summed, weight
    1 each, as both trainers do), {part: mean}, answers without a score). vqr1: unparsed answers get a random
    integer 1..5 for the ranking (theirs); qinsight: they score 0."""
    n, g = len(mos), num_generations
    if kind == "vqr1":
        preds, unparsed = parse_scores(texts, rng)
        parts = {"ranking": ranking_rewards(torch.tensor(preds).view(n, g), mos), "format": format_rewards(texts).view(n, g)}
    elif kind == "qinsight":
        unparsed = sum(parse_rating(t) is None for t in texts)
        parts = {"score": qinsight_score_rewards(texts, [m for m in mos for _ in range(g)], threshold).view(n, g),
                 "format": qinsight_format_rewards(texts).view(n, g)}
    else:
        raise ValueError(f"unknown reward {kind!r}; have {', '.join(REWARDS)}")
    return sum(parts.values()), {k: float(v.mean()) for k, v in parts.items()}, unparsed


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


# ----------------------------------------------------------------------------- rollout and per-token log-probs
MROPE = ("qwen_vl",)  # families whose forward derives its (3-D) positions from the attention mask itself


def prompt_record(record, question, system=""):
    """The record's image with `question` as the only user turn, the image first (both trainers' message), after
    `system` when given (Q-Insight's)."""
    return {"id": record.get("id"), "image": record["image"],
            "conversations": [{"from": "system", "value": system}] * bool(system) + [{"from": "human", "value": "<image>\n" + question}]}


def completion_mask(completion_ids, stop_ids):
    """[B, T] 1 on each generated token up to and including the row's first stop token (their trainer's mask), else 0."""
    stop = torch.zeros_like(completion_ids, dtype=torch.bool)
    for s in stop_ids:
        stop |= completion_ids == s
    length = torch.where(stop.any(1), stop.int().argmax(1), completion_ids.shape[1])
    return (torch.arange(completion_ids.shape[1], device=completion_ids.device)[None] <= length[:, None]).long()


def stop_ids_of(model):
    eos = model.generation_config.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


@torch.no_grad()
def rollout(model, processor, records, question, num_generations, max_new_tokens, temperature=1.0, top_k=50, top_p=1.0,
            device="cpu", system="", synced_gpus=False):
    """G sampled answers per record's image. Rows are record-major (record i: rows i*G .. i*G+G-1); each image is
    processed G times, so every family's pixel inputs line up with its rows. temperature None: the model's generation
    config's. -> (prompt batch [B*G, P] left-padded,
    completion ids [B*G, T], completion mask, completion texts as their trainer decodes them)."""
    prompts = [prompt_record(r, question, system) for r in records for _ in range(num_generations)]
    enc, _ = encode_prompts(processor, prompts, padding_side="left")
    enc = to_device(enc, model, device)
    tok = processor.tokenizer
    image_id = getattr(model.config, "image_token_id", getattr(model.config, "image_token_index", None))
    vocab = model.config.get_text_config().vocab_size
    sample = dict(do_sample=True, top_k=top_k, top_p=top_p, **({} if temperature is None else {"temperature": temperature}))
    out = model.generate(**enc, **sample, synced_gpus=synced_gpus,  # FSDP: every rank steps until all have stopped
                         max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                         # an image placeholder in an answer would ask the next forward for pixels it does not have
                         suppress_tokens=[image_id] if image_id is not None and image_id < vocab else None)
    comp = out[:, enc["input_ids"].shape[1]:]
    mask = completion_mask(comp, stop_ids_of(model))
    texts = tok.batch_decode(torch.where(mask.bool(), comp, tok.pad_token_id), skip_special_tokens=True)
    return enc, comp, mask, texts


def row_slice(enc, rows, sl):
    """The batch's rows `sl` (a slice) of a processor output of `rows` rows: per-row tensors sliced, and Qwen's
    flattened pixel_values cut at the patch counts of image_grid_thw."""
    out = {}
    for k, v in enc.items():
        if k == "pixel_values" and "image_grid_thw" in enc and v.shape[0] != rows:
            ends = enc["image_grid_thw"].prod(-1).cumsum(0).tolist()
            starts = [0] + ends[:-1]
            out[k] = v[starts[sl][0]:ends[sl][-1]] if starts[sl] else v[:0]
        else:
            out[k] = v[sl] if torch.is_tensor(v) and v.dim() and v.shape[0] == rows else v
    return out


def completion_inputs(model, enc, comp, mask):
    """The forward's inputs for prompt + completion: every per-token prompt tensor extended over the completion
    (token types 0, PaliGemma's 1: its answer tokens attend causally), positions from the mask where the family takes
    1-D ones (as generate counts them under left padding)."""
    p = enc["input_ids"].shape[1]
    attn = torch.cat([enc["attention_mask"], mask.to(enc["attention_mask"].dtype)], 1)
    inputs = {"input_ids": torch.cat([enc["input_ids"], comp], 1), "attention_mask": attn}
    for k, v in enc.items():
        if k in inputs:
            continue
        if torch.is_tensor(v) and v.dim() == 2 and v.shape == enc["input_ids"].shape:
            fill = 1 if k == "token_type_ids" and model.config.model_type == "paligemma" else 0
            v = torch.cat([v, torch.full_like(comp, fill, dtype=v.dtype)], 1)
        inputs[k] = v
    if family_of(model) not in MROPE and family_of(model) not in ("mplug_owl2", "xcomposer2"):
        inputs["position_ids"] = (attn.long().cumsum(1) - 1).clamp(min=0)
    return inputs, p


def completion_logps(model, enc, comp, mask):
    """Per-token log-probs [B, T] of the completion tokens under `model` (0 where mask is 0): one forward of prompt +
    completion, the LM head only at the completion's real tokens, each log-prob read by the repo's fused CE op
    (level_ce.py; its in-place backward: no second [N, V] buffer)."""
    inputs, p = completion_inputs(model, enc, comp, mask)
    hidden = backbone(model)(**inputs).last_hidden_state[:, p - 1:-1]  # position t predicts token t + 1
    keep = mask.bool()
    logits = lm_readout(model)[1](hidden[keep])
    ce = level_cross_entropy(logits, comp[keep], inplace_backward=True)[0]
    return torch.zeros(comp.shape, dtype=ce.dtype, device=ce.device).masked_scatter(keep, -ce)


@contextlib.contextmanager
def reference_weights(model, tensors):
    """The reference policy under --lora, without a copy of the model: peft's adapters switched off and the parameters
    named in `tensors` (those trained fully, e.g. the encoder) holding their starting values, for the duration."""
    from peft.tuners.tuners_utils import BaseTunerLayer  # only under --lora, which needs peft
    adapters = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    params = dict(model.named_parameters())
    kept = {n: params[n].data for n in tensors}
    for m in adapters:
        m.enable_adapters(False)
    for n, t in tensors.items():
        params[n].data = t
    try:
        yield
    finally:
        for n, t in kept.items():
            params[n].data = t
        for m in adapters:
            m.enable_adapters(True)


# ----------------------------------------------------------------------------- scoring by sampled answers
@torch.no_grad()
def sampled_scores(model, processor, records, kind="vqr1", k=1, batch_size=8, device="cpu", rng=None, temperature=None,
                   top_k=50, top_p=1.0, max_new_tokens=512, progress=False, synced_gpus=False):
    """Each record's score: the mean of k sampled answers' scores (an answer without one: a random integer 1..5, as
    VisualQuality-R1's inference does, counted). -> (scores [N], answers without a score, the first answer per record)."""
    from tqdm import tqdm
    import numpy as np
    rng = rng if rng is not None else np.random.default_rng(0)
    recipe = REWARDS[kind]
    scores, unparsed, first = [], 0, []
    for i in tqdm(range(0, len(records), batch_size), desc=f"sampled scores (K={k})", unit="batch", disable=not progress):
        chunk = records[i:i + batch_size]
        _, _, _, texts = rollout(model, processor, chunk, recipe["question"], k, max_new_tokens, top_k=top_k, top_p=top_p,
                                 temperature=temperature, device=device, system=recipe["system"], synced_gpus=synced_gpus)
        for j in range(len(chunk)):
            answers = texts[j * k:(j + 1) * k]
            parsed = [recipe["parse"](t) for t in answers]
            unparsed += sum(p is None for p in parsed)
            scores.append(float(np.mean([p if p is not None else float(rng.integers(1, 6)) for p in parsed])))
            first.append(answers[0])
    return scores, unparsed, first


def evaluate(ckpt=None, model=None, data=None, split="test", out=None, batch_size=8, limit=0, k=1, reward="auto",
             temperature=None, top_k=50, top_p=1.0, max_new_tokens=512, seed=0, bootstrap=1000, logistic=False,
             allow_unfinished=False):
    """evaluate.py sampled-score: each test image scored by the mean of k sampled answers to the reward recipe's
    prompt (reward auto: the run's own, else vqr1), SRCC / PLCC / KRCC per source against mos_norm, and the share of
    answers without a score. Writes OUT/eval_sampled_score.json and OUT/predictions_sampled_score.jsonl."""
    import os
    import numpy as np
    from iqa_vlm.common import atomic_write_json, atomic_write_jsonl
    from iqa_vlm.data import load_records
    from iqa_vlm.metrics import score_metrics
    from iqa_vlm.model import eval_device, eval_out, load_evaluated
    from iqa_vlm.studies.scoring import training_protocol
    device, dtype = eval_device()
    vlm, processor, cfg, name = load_evaluated(ckpt, model, device, dtype, allow_unfinished)
    reward = cfg.get("reward", "vqr1") if reward == "auto" else reward
    if reward not in REWARDS:
        raise SystemExit(f"--reward must be auto or one of {', '.join(REWARDS)}, got {reward!r}")
    data_dirs = data or cfg.get("data") or "data/demo_score"
    records = [r for r in load_records(data_dirs, split) if r.get("task", "score") == "score" and r.get("image")]
    records = records[:limit] if limit else records
    if not records:
        raise SystemExit(f"no score records with an image in {data_dirs} ({split}); prepare_data.py --task score writes them")
    torch.manual_seed(seed)
    scores, unparsed, first = sampled_scores(vlm, processor, records, reward, k, batch_size, device,
                                             np.random.default_rng(seed), temperature, top_k, top_p, max_new_tokens,
                                             progress=True)
    preds = [{"id": r.get("id"), "source": r.get("source"), "score": s, "mos": r.get("mos"), "mos_norm": r.get("mos_norm"),
              "answer": a} for r, s, a in zip(records, scores, first)]
    metrics = score_metrics([{**p, "mos": p["mos_norm"] if p["mos_norm"] is not None else p["mos"]} for p in preds],
                            logistic=True, bootstrap=bootstrap, seed=seed, logistic_ci=logistic)
    run_out = eval_out(out, ckpt, model)
    os.makedirs(run_out, exist_ok=True)
    result = {"task": "sampled_score", "model": name, "training_protocol": training_protocol(cfg, model or ckpt),
              "data": data_dirs, "split": split, "reward": reward, "prompt": REWARDS[reward]["question"],
              "system": REWARDS[reward]["system"], "k": k,
              "sampling": {"temperature": temperature if temperature is not None else "the model's generation config",
                           "top_k": top_k, "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed},
              "answers": len(records) * k, "answers_without_score": unparsed,
              "answers_without_score_rule": "a random integer 1-5 in the mean (VisualQuality-R1's inference)",
              "per_source": metrics, "unfinished_checkpoint": cfg.get("finished") is False}
    atomic_write_json(os.path.join(run_out, "eval_sampled_score.json"), result)
    atomic_write_jsonl(os.path.join(run_out, "predictions_sampled_score.jsonl"), preds)
    print(f"{name}: K={k}, {unparsed} of {len(records) * k} answers without a score; " + "; ".join(
        f"{s} SRCC {m['srcc'] if m['srcc'] is None else round(m['srcc'], 4)} PLCC "
        f"{m['plcc'] if m['plcc'] is None else round(m['plcc'], 4)} (n {m['n']})" for s, m in metrics.items())
          + f"  -> {run_out}/eval_sampled_score.json")
    return result
