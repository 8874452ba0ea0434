"""Quality scoring (Q-Align / Q-SiT): MOS -> five text levels, the closed-set softmax over the level tokens, the
cross-dataset table with Q-SiT's Avg. column, and what the level conversion keeps.

Zhang, Wu, Jia, Lin, Zhai, "Teaching LMMs for image quality scoring and interpreting" (Q-SiT): levels in equal
intervals between the dataset's min and max (Table II), score = softmax over the five level logits @ [1..5],
scoring data mixed with interpreting and general data at a ratio found on a small model (Algorithm 1: steps 1-2 in
data_mix.py, step 3 data_mix.Mixer.balance). The training question and answer are Q-Align's; Q-SiT's own evaluation prompt
is --prompt qsit.

    python prepare_data.py --task score --koniq /data/koniq10k --out data/score     # make_score
    python evaluate.py score --ckpt out/A --ckpt out/B --data data/score             # evaluate (the table)
    python analyze.py level-precision --meta IQA-PyTorch/pyiqa/data/meta_info                      # level_precision_report
    python evaluate.py score --ckpt out/qsit_mini --data data/score --prompt qsit     # Q-SiT's evaluation prompt
"""
import json
import os
import random
import time
from collections import Counter

import torch
from PIL import Image
from tqdm import tqdm

from iqa_vlm import iqa_datasets as D
from iqa_vlm import iqa_io
from iqa_vlm.common import atomic_write_json, atomic_write_jsonl
from iqa_vlm.studies.deqa import attach_soft_labels, read_authors_mos
from iqa_vlm.data import (LEVEL_PREFIX, LEVELS, claim_output, closed_set_meta, closed_set_token_ids, encode_prompts, load_image,
                          load_records, read_closed_set, tokenize_batch, with_instruction, write_splits)
from iqa_vlm.metrics import closed_set_scores, plcc, score_metrics, srcc
from iqa_vlm.studies.data_mix import uses_instruction
from iqa_vlm.model import eval_device, eval_out, last_token_logits, load_evaluated, to_device

# ----------------------------------------------------------------------------- prompts (Q-Align form)
# Q-SiT's released scoring data ask one question, the one Q-Align evaluates with; Q-Align's training data
# (Q-Future/Q-Align playground/data/training_sft/train_koniq.json) draw each record's question from these nine, about
# equally often (--paraphrases true; its train_spaq.json uses seven of them, one record in seven asking two at once)
SCORE_QUESTION = "How would you rate the quality of this image?"
SCORE_PARAPHRASES = ["What's your opinion on the quality of this picture?", "How do you assess the quality of this image?",
                     "Could you evaluate the quality of this image?", "How would you judge the quality of this image?",
                     "Rate the quality of this image.", "Can you rate the quality of this picture?", SCORE_QUESTION,
                     "What is your quality rating for this image?", "What do you think about the quality of this image?"]
# Q-SiT's scoring data opens the user turn with it (Q-Future/Q-SIT training_jsons/train_{koniq,spaq}_qsit.json:
# "Assume you are an image quality evaluator. How would you rate the quality of this image?\n<image>")
EVALUATOR_INSTRUCTION = "Assume you are an image quality evaluator."
# Q-SiT's released evaluation (its README's scoring example and eval script): instruction and question in one user turn
# ahead of the image, "The quality of this image is " appended raw after the generation prompt, and the level read from
# the first tokens of the capitalized words. evaluate.py score --prompt qsit.
QSIT_QUESTION = ("Assume you are an image quality evaluator. \nYour rating should be chosen from the following five "
                 "categories: Excellent, Good, Fair, Poor, and Bad (from high to low). \nHow would you rate the quality "
                 "of this image?")
QSIT_PREFIX = "The quality of this image is "
QSIT_LEVEL_WORDS = ["Bad", "Poor", "Fair", "Good", "Excellent"]  # LEVELS' order, low to high
# The released scorers of Q-Align / OneAlign (Q-Future/Q-Align q_align/evaluate/scorer.py, QAlignScorer) and DeQA-Score
# (zhiyuanyou/DeQA-Score src/evaluate/scorer.py, Scorer): this one prompt as it stands (a newline, not the conversation's
# space, before ASSISTANT), mPLUG-Owl2 only; the level read after its last word. evaluate.py score --prompt scorer.
SCORER_PROMPT = "USER: How would you rate the quality of this image?\n<|image|>\nASSISTANT: The quality of the image is"
# Q-Instruct's released scorer (Q-Future/Q-Instruct's scorer, boost off as its README calls it): three levels, read right
# after "ASSISTANT: " (its trailing space kept), the image given to the checkpoint's image processor as it is (resized
# and centre-cropped there, not padded to a square as Q-Align pads). evaluate.py score --prompt qinstruct.
QINSTRUCT_PROMPT = "USER: <|image|>Rate the quality of the image.\nASSISTANT: "
QINSTRUCT_LEVEL_WORDS = ["poor", "average", "good"]  # low to high
RAW_PROMPTS = {"scorer": (SCORER_PROMPT, LEVELS), "qinstruct": (QINSTRUCT_PROMPT, QINSTRUCT_LEVEL_WORDS)}
PROMPTS = ("qalign", "qsit", "scorer", "qinstruct")

# ----------------------------------------------------------------------------- level labels
# The data Q-Align and Q-SiT trained and tested with (Q-Future/Q-Align playground/data/training_sft/train_{koniq,spaq}.json
# and test_jsons/test_{koniq,spaq}.json; Q-Future/Q-SIT training_jsons/train_{koniq,spaq}_qsit.json, the same labels)
# keep the images whose MOS lies in a range [m, M) and label them by equal fifths of it, not of the dataset's own min
# and max (Eq. 1 as printed): 582 of 7,046 KonIQ and 958 of 8,897 SPAQ training labels differ from Eq. 1 over the
# whole dataset. Found by fitting the released files (dev/check_released_levels.py reproduces every label); the
# authors' script that made them is not released.
#   koniq10k: [6.68487394958, 85.35625), the 9th lowest and 9th highest MOS of KonIQ's official training and test
#             splits; the released files leave out the 8 images below and the 9 at or above (12 training, 5 test)
#   spaq:     [0, 94) (94 is the span of SPAQ's MOS, 2 to 96, here counted from 0); the 4 images at 94 or more are out
# Each fifth holds its lower edge, with the width computed first: 3 * 18.8 rounds above 56.4, so 56.4 is "fair" in the
# released data while 37.6 and 75.2 open "fair" and "excellent". Other sources: Eq. 1 (Q-Align's released KADID-10k
# labels overlap in score, poor 1.83-2.58 and fair 2.07-3.35, so no rule on the score reproduces them).
RELEASED_LEVEL_RANGE = {"koniq10k": (6.68487394958, 85.35625), "spaq": (0.0, 94.0)}
LEVEL_RULES = ("released", "eq1")


def released_level(s, m, M):
    """The level of score s in the released labels' fifths of [m, M) (RELEASED_LEVEL_RANGE)."""
    width = (M - m) / 5
    return LEVELS[sum(s >= m + k * width for k in range(1, 5))]


def apply_level_rule(items, info, rule):
    """rule "released": for a source with a released range (RELEASED_LEVEL_RANGE), the images and labels the authors
    used: scored items outside [m, M) are left out (counted in info["released_range_left_out"]), the others labelled
    by released_level. Otherwise, and for rule "eq1", the levels norm_scores gave (Eq. 1 over the dataset's range).
    Records the rule in info["level_rule"]; returns the items kept. A released range is on the 0..100 scale: a source
    read on another scale (KonIQ's 1-5 MOS column) is an error."""
    source = info["source"]
    if rule not in LEVEL_RULES:
        raise ValueError(f"level rule {rule!r}: expected one of {', '.join(LEVEL_RULES)}")
    if rule == "eq1" or source not in RELEASED_LEVEL_RANGE:
        info["level_rule"] = f"eq1: equal fifths of the dataset's range {info['score_range']}"
        return items
    m, M = RELEASED_LEVEL_RANGE[source]
    lo, hi = info["score_range"]
    if lo < 0 or hi > 100 or hi - lo < 50:
        raise ValueError(f"{source}: scores in [{lo}, {hi}] ({info.get('metadata_file')}, column "
                         f"{info.get('score_column', 'MOS')}); the released labels' rule is for the 0..100 scale: use "
                         f"metadata on that scale, or --level_rule eq1")
    below = sum(it["mos"] is not None and it["mos"] < m for it in items)
    above = sum(it["mos"] is not None and it["mos"] >= M for it in items)
    kept = [it for it in items if it["mos"] is None or m <= it["mos"] < M]
    for it in kept:
        if it["mos"] is not None:
            it["level"] = released_level(it["mos"], m, M)
    info["level_rule"] = f"released: the authors' data, MOS in [{m}, {M}) in equal fifths, lower edge inclusive"
    info["released_range_left_out"] = {"below": below, "at_or_above": above}
    return kept


def score_record(rid, image, level, source, ref, rng=None, image_first=False, **extra):
    """One scoring record. rng (random.Random) picks a paraphrase of the question; None = the canonical one. The image
    placeholder follows the question, as in Q-Align's and Q-SiT's released training data ("...this image?\n<image>");
    image_first=True puts it ahead (the demo view, whose measured numbers were made that way)."""
    question = rng.choice(SCORE_PARAPHRASES) if rng is not None else SCORE_QUESTION
    return {"id": rid, "image": image,
            "conversations": [{"from": "human", "value": "<image>\n" + question if image_first else question + "\n<image>"},
                              {"from": "gpt", "value": f"{LEVEL_PREFIX} {level}."}],
            "task": "score", "source": source, "ref": ref, "level": level, **extra}


def left_out_note(info):
    out = info.get("released_range_left_out")
    return f" (left out as in the released data: {out['below']} below its range, {out['at_or_above']} at or above)" \
        if out and sum(out.values()) else ""


# ----------------------------------------------------------------------------- records
def make_score(datasets, out, split="ref", seed=0, test_frac=0.2, val_frac=0.1, check_images=True, soft_density=None,
               soft_spread=None, paraphrases=False, authors_mos=None, level_rule="released"):
    """Scoring records (Q-Align form) from IQA datasets: MOS -> level by the labels the authors released for KonIQ and
    SPAQ (level_rule "released", apply_level_rule), else by equal intervals between the dataset's min and max (Eq. 1,
    iqa_datasets.norm_scores; level_rule "eq1" everywhere). KonIQ-10k keeps its official training/test split when the
    metadata has it (its official validation set goes to official_val.jsonl, counted); the others are split test_frac
    by reference content (or randomly; test_frac 1: all of it tested, as Q-SiT tests LIVE-C, AGIQA-3K and KADID-10k).
    Then val_frac of each training part is held out for validation (Q-SiT: 10 %). LIVE Challenge's t1..t7 stay in train. Reference
    images without a score are left out. One question (Q-SiT's); paraphrases=True draws each training record's
    question from Q-Align's nine (SCORE_PARAPHRASES), as Q-Align's training data.
    Every record also carries DeQA-Score's soft labels (deqa.attach_soft_labels; soft_density / soft_spread: per-source
    overrides {source: "pdf"|"cdf"}, {source: "std"|"var"}), counted per kind in meta.json. authors_mos {source: path
    of DeQA-Score's released mos.json}: the spread of each image from there (matched by file name, the unmatched
    counted), normalised by that file's MOS range, as their labels are built (SPAQ's public metadata has no spread)."""
    claim_output(out)  # before hours of reading, not after
    splits, infos = {"train": [], "val": [], "test": []}, {}
    for source, root in datasets.items():
        t0 = time.time()
        items, info = D.READERS[source](root, check_images=check_images)
        D.norm_scores(items, info)
        items = apply_level_rule(items, info, level_rule)
        scored = [it for it in items if it["mos"] is not None]
        if (authors_mos or {}).get(source):
            spreads, info["std_scale_range"] = read_authors_mos(authors_mos[source])
            hits = [it for it in scored if os.path.basename(it["image"]) in spreads]
            for it in hits:
                it["std"] = spreads[os.path.basename(it["image"])][1]
            info["authors_mos"] = {"file": authors_mos[source], "matched": len(hits), "unmatched": len(scored) - len(hits)}
        ref_image = D.reference_images(items)
        official_val = []
        if any(it.get("split") for it in scored):
            train = [it for it in scored if it.get("split") not in ("validation", "test")]
            test = [it for it in scored if it.get("split") == "test"]
            official_val = [it for it in scored if it.get("split") == "validation"]
            info["split_policy"] = f"official training/test split (validation set -> official_val.jsonl), val {val_frac:.0%} of training"
        else:
            train, test = D.split_items(scored, test_frac=test_frac, by=split, seed=seed)
            info["split_policy"] = (f"{'by reference content' if split == 'ref' else 'random'}, test {test_frac:.0%}, "
                                    f"val {val_frac:.0%} of the rest")
        train, val = D.split_items(train, test_frac=val_frac, by=split, seed=seed + 1) if val_frac > 0 and train else (train, [])
        parts = {"train": train, "val": val, "test": test, **({"official_val": official_val} if official_val else {})}
        for name in parts:
            splits.setdefault(name, [])
        rng = random.Random(f"{seed}:{source}")
        for name, part in parts.items():
            for it in part:
                extra = {k: it[k] for k in ("mos", "mos_norm", "std", "label", "dist", "level_idx", "is_train_only")
                         if it.get(k) is not None and it.get(k) is not False}
                if not it["is_ref"] and (source, it["ref"]) in ref_image:
                    extra["ref_image"] = ref_image[(source, it["ref"])]
                splits[name].append(score_record(it["id"], it["image"], it["level"], source, it["ref"],
                                                 rng if paraphrases and name == "train" else None, **extra))
        info.update(n_scored=len(scored), n_unscored_refs=len(items) - len(scored),
                    levels=dict(Counter(it["level"] for it in scored)), split_counts={k: len(v) for k, v in parts.items()})
        infos[source] = info
        print(f"{source}: {len(scored)} scored images ({info['layout']} layout, range {info['score_range']}, "
              f"{info['direction']}), levels {info['level_rule'].split(':')[0]}{left_out_note(info)}, "
              f"split {info['split_counts']}, {time.time() - t0:.1f}s" + iqa_io.skipped_note(info))
    soft = attach_soft_labels(splits, infos, soft_density, soft_spread)
    for source, c in soft.items():
        print(f"{source}: soft labels {', '.join(f'{k} {v}' for k, v in c.items())}")
    meta = {"task": "score", **closed_set_meta(), "seed": seed, "level_rule": level_rule, "datasets": infos, "soft_labels": soft,
            "score_direction": {s: i.get("direction") for s, i in infos.items()},
            "score_range": {s: i.get("score_range") for s, i in infos.items()}}
    return write_splits(out, splits, meta)


# ----------------------------------------------------------------------------- evaluation
def qsit_level_ids(processor):
    """Q-SiT's level ids: the first token of each capitalized word tokenized alone (no special tokens: Q-SiT's Qwen2
    tokenizer adds none, and a BOS would be read as the level on tokenizers that add one)."""
    tok = processor.tokenizer
    ids = [tok(w, add_special_tokens=False)["input_ids"][0] for w in QSIT_LEVEL_WORDS]
    if len(set(ids)) != len(ids) or (tok.unk_token_id is not None and tok.unk_token_id in ids):
        raise ValueError(f"Q-SiT's level words do not map to distinct known tokens: {tok.convert_ids_to_tokens(ids)}")
    return ids


def level_words(prompt):
    """The closed set a prompt style reads, low to high."""
    return RAW_PROMPTS[prompt][1] if prompt in RAW_PROMPTS else QSIT_LEVEL_WORDS if prompt == "qsit" else LEVELS


def level_ids_for(processor, prompt, answer_prefix=LEVEL_PREFIX):
    """The level tokens a prompt style reads, low to high (level_words)."""
    if prompt not in PROMPTS:
        raise SystemExit(f"--prompt must be one of {PROMPTS}, got {prompt!r}")
    if prompt == "qsit":
        return qsit_level_ids(processor)
    if prompt in RAW_PROMPTS:  # the released scorers' ids: tokenizer(word).input_ids[1], the word's first piece after BOS
        sp, tok = getattr(processor, "sentencepiece", None), processor.tokenizer
        words = RAW_PROMPTS[prompt][1]
        ids = [sp.encode(w)[0] if sp is not None else tok(w, add_special_tokens=False)["input_ids"][0] for w in words]
        if len(set(ids)) != len(ids):
            raise ValueError(f"the level words {words} do not map to distinct first tokens: {ids}")
        return ids
    return closed_set_token_ids(processor, LEVELS, answer_prefix)


def encode_for_score(processor, records, prompt, instruction=None, answer_prefix=LEVEL_PREFIX):
    """(batch, index of each row's last token) for a prompt style (PROMPTS); a record's image is a path or a PIL image.
    Right padding: a row's tokens never see the padding, so its score does not depend on its batch."""
    if prompt == "qsit":
        return encode_prompts(processor, [{**r, "conversations": [{"from": "human", "value": QSIT_QUESTION + "\n<image>"}]}
                                          for r in records], after_prompt=QSIT_PREFIX)
    if prompt in RAW_PROMPTS:
        if getattr(processor, "image_token", None) != "<|image|>":
            raise SystemExit(f"--prompt {prompt} is a released mPLUG-Owl2 scorer's prompt; this model's processor is "
                             f"another family's")
        images = [r["image"] if isinstance(r["image"], Image.Image) else load_image(r["image"]) for r in records]
        enc = tokenize_batch(processor, [RAW_PROMPTS[prompt][0]] * len(records), images, "right", records)
        if prompt == "qinstruct":  # the image as it is: the checkpoint's own resize and centre crop, no square padding
            enc["pixel_values"] = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return enc, enc["attention_mask"].sum(1) - 1
    return encode_prompts(processor, [with_instruction(r, instruction) if instruction else r for r in records],
                          answer_prefix=answer_prefix)


@torch.no_grad()
def level_probs(model, processor, records, prompt, level_ids, device="cpu", instruction=None, answer_prefix=LEVEL_PREFIX):
    """One prefill of a batch -> (probs [N, K] low to high, score01 [N] = probs @ [0, 1/(K-1), .., 1], nll [N] of the
    record's level or None), through the op (metrics.closed_set_scores). A K-level prompt's score on 1..5 is
    1 + 4 score01 (for K = 5, probs @ [1..5])."""
    enc, last = encode_for_score(processor, records, prompt, instruction, answer_prefix)
    logits = last_token_logits(model, to_device(enc, model, device), last, exact_ids=level_ids)
    five = len(level_ids) == len(LEVELS)
    target = [LEVELS.index(r["level"]) if five and r.get("level") in LEVELS else -1 for r in records]
    probs, score, nll = closed_set_scores(logits, level_ids, target)
    return probs, (score - 1) / (len(level_ids) - 1), nll


def eval_score(model, processor, records, batch_size=32, device="cpu", instruction=None, prompt="qalign",
               answer_prefix=LEVEL_PREFIX):
    """Scoring: closed-set softmax over the 5 level tokens -> score = probs @ [1..5]; one prediction dict per record.
    prompt qalign: the record's question, answer_prefix ("The quality of the image is", as meta.json records it)
    teacher-forced in the answer (Q-Align's evaluation form, what train.py teaches); qsit: Q-SiT's evaluation prompt
    (QSIT_*); scorer, qinstruct: the released mPLUG-Owl2 scorers' prompts (RAW_PROMPTS)."""
    level_ids = level_ids_for(processor, prompt, answer_prefix)
    five = len(level_ids) == len(LEVELS)
    preds = []
    for start in tqdm(range(0, len(records), batch_size), desc="eval score", unit="batch"):
        recs = records[start:start + batch_size]
        probs, score01, nll = level_probs(model, processor, recs, prompt, level_ids, device, instruction, answer_prefix)
        for r, p, s, l in zip(recs, probs.tolist(), score01.tolist(), nll.tolist()):
            preds.append({"id": r.get("id"), "source": r.get("source"), "mos": r.get("mos"), "mos_norm": r.get("mos_norm"),
                          "level": r.get("level"), "probs": [round(x, 5) for x in p], "score": round(1 + 4 * s, 5),
                          "score01": round(s, 5), "nll": round(l, 5) if five and r.get("level") in LEVELS else None})
    return preds


def evaluate(ckpts=(), model=None, data=None, split="test", out=None, batch_size=32, limit=0, logistic=False,
             instruction="auto", table=None, allow_unfinished=False, prompt="qalign", bootstrap=1000, seed=0):
    """evaluate.py score: one row per checkpoint in `ckpts` (and the untuned `model`), one column per test source.
    instruction: EVALUATOR_INSTRUCTION at the start of the question, as Q-SiT's scoring data has it (auto: if the run
    trained on a --mix of several sources).
    Writes per row OUT/eval_score.json and OUT/predictions_score.jsonl, and the cross-dataset table (rows: trained
    on, columns: tested on) to `table` (default OUT/score_table.json), also printed."""
    if instruction not in ("auto", "yes", "no"):
        raise SystemExit(f"--instruction must be auto, yes or no, got {instruction!r}")
    prompt = "qalign" if prompt == "auto" else prompt
    runs = [("ckpt", c) for c in ckpts or []] + ([("model", model)] if model else [])
    if not runs:
        raise SystemExit("give --ckpt DIR (one or more) or --model NAME")
    device, dtype = eval_device()
    rows, columns = {}, []
    for kind, name in runs:
        vlm, processor, cfg, _ = load_evaluated(*((name, None) if kind == "ckpt" else (None, name)), device, dtype,
                                                allow_unfinished)
        if kind == "ckpt":
            data_dirs, row, trained_on = data or cfg["data"], os.path.basename(os.path.normpath(name)), cfg["data"]
            run_out = os.path.join(out, row) if out and len(runs) > 1 else eval_out(out, name, None)
        else:
            data_dirs, row, trained_on = data or "data/demo_score", f"untuned {name}", None
            run_out = eval_out(out, None, name)
            run_out = os.path.join(run_out, "untuned") if out and len(runs) > 1 else run_out
        said = EVALUATOR_INSTRUCTION if instruction == "yes" or (instruction == "auto" and uses_instruction(cfg.get("mix"))) \
            else None
        records = [r for r in load_records(data_dirs, split) if r.get("task") == "score"]
        records = records[:limit] if limit else records
        if not records:
            raise SystemExit(f"no score records in {data_dirs} ({split}); make them with prepare_data.py --task score")
        said = None if prompt == "qsit" else said  # Q-SiT's evaluation prompt carries its own
        prefix = read_closed_set(data_dirs, expect=LEVELS)[1]
        preds = eval_score(vlm, processor, records, batch_size, device, said, prompt, prefix)
        for p in preds:  # correlations against mos_norm: higher = better for every source (DMOS flipped)
            p["target"] = p["mos_norm"] if p["mos_norm"] is not None else p["mos"]
        metrics = score_metrics([{**p, "mos": p["target"]} for p in preds], logistic=True, bootstrap=bootstrap, seed=seed,
                                logistic_ci=logistic)
        os.makedirs(run_out, exist_ok=True)
        atomic_write_json(os.path.join(run_out, "eval_score.json"), {
            "task": "score", "model": name, "trained_on": trained_on, "training_protocol": training_protocol(cfg, name),
            "data": data_dirs, "split": split, "bootstrap": {"resamples": bootstrap, "seed": seed, "level": 0.95},
            "instruction": said, "prompt": prompt, "logistic": logistic, "per_source": metrics,
            "unfinished_checkpoint": cfg.get("finished") is False})
        atomic_write_jsonl(os.path.join(run_out, "predictions_score.jsonl"), preds)
        rows[row] = {"trained_on": trained_on, "training_protocol": training_protocol(cfg, name), "results": metrics}
        columns += [s for s in metrics if s not in columns]
        print(f"{row}: " + ", ".join(f"{s} " + " ".join(f"{k.upper()} {fmt(m[k])}{ci_text(m.get(k + '_ci'))}"
                                                        for k in ("srcc", "plcc", "krcc")) for s, m in metrics.items())
              + f"  -> {run_out}/eval_score.json, predictions_score.jsonl")
    columns.sort(key=lambda c: (TABLE3_ORDER.index(c) if c in TABLE3_ORDER else len(TABLE3_ORDER), c == "all", c))
    key = "plcc_logistic" if logistic else "plcc"
    print(f"SRCC/{'PLCC (logistic)' if logistic else 'PLCC'}, split {split}:\n" + score_table_text(rows, columns, key))
    table = table or os.path.join(out or (eval_out(None, ckpts[0], None) if ckpts and len(runs) == 1 else "out"), "score_table.json")
    atomic_write_json(table, {"rows": list(rows), "columns": columns, "metric": ["srcc", key], "split": split, "table": rows,
                              "avg": {r: table_average(e["results"], columns, key) for r, e in rows.items()},
                              "avg_is": "mean over the tested datasets of (SRCC + PLCC) / 2 (Q-SiT's Avg.)"})
    print(f"table -> {table}")
    return rows


# What the released scorers were trained on (Q-Align's model zoo, DeQA-Score's README), recorded with their results
RELEASED_TRAINING = {
    "q-future/one-align": "KonIQ-10k, SPAQ, KADID-10k (IQA), AVA (IAA), LSVQ (VQA)",
    "q-future/q-align-iqa": "KonIQ-10k, SPAQ, KADID-10k", "q-future/q-align-image": "KonIQ-10k, SPAQ, KADID-10k, AVA",
    "q-future/q-align-quality": "KonIQ-10k, SPAQ, KADID-10k, LSVQ", "q-future/q-align-aesthetic": "AVA",
    "q-future/q-align-vqa": "LSVQ", "zhiyuanyou/deqa-score-mix3": "KonIQ-10k, SPAQ, KADID-10k",
    "zhiyuanyou/deqa-score-lora-mix3": "KonIQ-10k, SPAQ, KADID-10k"}


# The test sets of DeQA-Score's cross-dataset table, in its order (zhiyuanyou/DeQA-Score scripts/infer.sh: KonIQ, SPAQ,
# KADID, PIPAL, LIVE-Wild, AGIQA-3K, TID2013, CSIQ); the score table's columns follow it, other sources after them.
# PIPAL has no reader here. The paper's published rows are not in this repo: its text was not at hand.
TABLE3_ORDER = ["koniq10k", "spaq", "kadid10k", "pipal", "livec", "agiqa3k", "tid2013", "csiq"]


def training_protocol(cfg, name):
    """How the scored checkpoint was trained, for the result files: a train.py run's data folders with the sources and
    counts of their training splits (one dataset, or a mix), a released scorer's data as published, or untuned."""
    if not cfg:
        released = RELEASED_TRAINING.get(name.strip("/").lower())
        return {"kind": "released" if released else "untuned", "trained_on": released,
                "note": None if released else "not trained for IQA here; a released checkpoint's model card says on what"}
    sources = {}
    for d in cfg["data"].split(","):
        try:
            with open(os.path.join(d, "meta.json")) as f:
                counts = json.load(f).get("counts", {}).get("train", {}).get("by_source", {})
        except (OSError, ValueError):
            counts = {}
        for src, n in counts.items():
            sources[src] = sources.get(src, 0) + n
    return {"kind": "one dataset" if len(sources) == 1 else "a mix" if sources else "unknown (no meta.json counts)",
            "trained_on": cfg["data"], "training_sources": sources, "mix": cfg.get("mix"), "trainable": cfg.get("trainable")}


def fmt(x):
    return "-" if x is None else f"{x:.4f}"


def ci_text(ci):
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def table_average(results, columns, key):
    """Q-SiT's Avg. column (Table IV): the mean over the tested datasets of (SRCC + PLCC) / 2 ('all' left out)."""
    cells = [results[c] for c in columns if c != "all" and c in results and results[c].get("srcc") is not None
             and results[c].get(key) is not None]
    return sum((m["srcc"] + m[key]) / 2 for m in cells) / len(cells) if cells else None


def score_table_text(rows, columns, key):
    """Rows: trained on; columns: tested on; cells SRCC/PLCC; the last column Q-SiT's Avg."""
    def cell(m):
        return "/".join("  -  " if m.get(k) is None else f"{m[k]:.3f}" for k in ("srcc", key))
    lines = ["trained on \\ tested on".ljust(28) + "".join(c.rjust(14) for c in columns) + "Avg.".rjust(8)]
    for row, entry in rows.items():
        avg = table_average(entry["results"], columns, key)
        lines.append(row[:28].ljust(28) + "".join(cell(entry["results"].get(c, {})).rjust(14) for c in columns)
                     + ("-" if avg is None else f"{avg:.3f}").rjust(8))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- level precision (Table II)
def level_precision(scores, direction="higher_better"):
    """How much the 5-level conversion keeps: SRCC/PLCC between the level index (1..5) and the scores, the
    levels from iqa_datasets.norm_scores (equal intervals between the scores' min and max)."""
    items = [{"source": "x", "mos": float(s)} for s in scores]
    D.norm_scores(items, {"source": "x", "direction": direction})
    idx = [LEVELS.index(it["level"]) + 1 for it in items]
    oriented = [-s for s in scores] if direction == "lower_better" else list(scores)
    return {"n": len(items), "srcc": srcc(idx, oriented), "plcc": plcc(idx, oriented),
            "levels": {lv: idx.count(i + 1) for i, lv in enumerate(LEVELS)}}


# pyiqa metadata (IQA-PyTorch pyiqa/data/meta_info): score column and direction of each dataset
LEVEL_META = {"koniq10k": ("mos", "higher_better"), "spaq": ("MOS", "higher_better"), "livec": ("mos", "higher_better"),
              "kadid10k": ("dmos", "higher_better"), "tid2013": ("mos", "higher_better"), "live": ("mos", "lower_better"),
              "csiq": ("dmos", "lower_better")}


def level_precision_report(meta=None, agiqa=None, data=None, out="out"):
    """How much the MOS -> level conversion keeps: SRCC/PLCC between the 5 levels (1..5; equal intervals between
    the dataset's min and max, iqa_datasets.norm_scores) and the scores they come from, per dataset (the check of
    Table II). Reads IQA-PyTorch meta_info CSVs (`meta`, a folder; no images needed), AGIQA-3K's released data.csv
    (`agiqa`: IQA-PyTorch has no meta_info file for it; its mos_quality column) and/or prepared score folders (`data`).
    Writes OUT/level_precision.json and prints the table."""
    results = {}
    if meta:
        for source, (col, direction) in LEVEL_META.items():
            path = os.path.join(meta, D.PYIQA_META[source])
            if os.path.isfile(path):
                rows = iqa_io.read_csv(path, [col])[1]
                scores = [iqa_io.num(r[col], f"{path}:{line}", col) for line, r in rows]
                results[source] = {"file": path, "direction": direction, **level_precision(scores, direction)}
    if agiqa:
        path = os.path.join(agiqa, "data.csv") if os.path.isdir(agiqa) else agiqa
        if not os.path.isfile(path):
            raise SystemExit(f"level-precision: --agiqa {agiqa}: no data.csv there (AGIQA-3K's released metadata)")
        rows = iqa_io.read_csv(path, ["mos_quality"])[1]
        scores = [iqa_io.num(r["mos_quality"], f"{path}:{line}", "mos_quality") for line, r in rows]
        results["agiqa3k"] = {"file": path, "direction": "higher_better", **level_precision(scores, "higher_better")}
    for d in [d for d in (data or "").split(",") if d]:
        with open(os.path.join(d, "meta.json")) as f:
            directions = json.load(f).get("score_direction", {})
        recs = [r for split in ("train", "val", "test") if os.path.exists(os.path.join(d, f"{split}.jsonl"))
                for r in load_records([d], split) if r.get("task") == "score" and r.get("mos") is not None]
        for source in sorted({r["source"] for r in recs}):
            scores = [r["mos"] for r in recs if r["source"] == source]
            direction = directions.get(source, "higher_better")
            results[f"{os.path.basename(os.path.normpath(d))}/{source}"] = {"direction": direction,
                                                                           **level_precision(scores, direction)}
    if not results:
        raise SystemExit("level-precision: nothing read; give --meta DIR (pyiqa meta_info CSVs), --agiqa data.csv "
                         "and/or --data DIR")
    print(f"{'dataset':24s} {'n':>6s} {'SRCC':>7s} {'PLCC':>7s}   images per level (bad..excellent)")
    for name, r in results.items():
        print(f"{name:24s} {r['n']:6d} {r['srcc']:7.4f} {r['plcc']:7.4f}   {list(r['levels'].values())}")
    path = os.path.join(out, "level_precision.json")
    atomic_write_json(path, {"what": "SRCC/PLCC of level index (1..5) vs the dataset's scores", "results": results})
    print(f"-> {path}")
    return results
