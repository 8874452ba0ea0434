"""Two-stage quality reasoning: pathway feedback split into perception and inference, one-stage and two-stage
inference, the instability ratio.

Li, Sun, Chen, Nishida, "Building reasonable inference for vision-language models in blind image quality assessment":
stage 1 teaches image -> low-level description, stage 2 (text only) description -> quality level; measured by
SRCC/PLCC, by the instability ratio (repeated sampling of the same input) and by looking at the quality token
(logit lens and attention: quality_token.py).

    from iqa_vlm.studies import two_stage as TS
    TS.split_feedback("The image is blurry. Overall, the quality of the image is poor.")
    # {'description': 'The image is blurry.', 'conclusion': 'Overall, the quality of the image is poor.', 'level': 'poor', ...}
    TS.instability_ratio([["poor", "poor"], ["poor", "fair"], ["good", None]])   # ratio 2/3

    python prepare_data.py --task pathway --demo data/demo --out data/demo_pathway        # make_pathway
    python evaluate.py two-stage --ckpt out/pw_stage2 --data data/demo_pathway             # evaluate: SRCC/PLCC, latency
    python evaluate.py two-stage --pipeline one_stage --ckpt out/pw_one_stage --data data/demo_pathway
    python evaluate.py instability --sessions 3 --repeats 5 --ckpt out/pw_stage2 --data data/demo_pathway
    python evaluate.py instability --pipeline one_stage --fixed_description true --ckpt out/pw_one_stage

Pathway feedback (Q-Instruct / Q-Pathway) is a low-level description that ends in an overall conclusion naming the
quality. Three views of it (prepare_data.py --task pathway):
  one_stage  image -> the whole feedback (description + conclusion)
  stage1     image -> the description without its conclusion (perception)
  stage2     text only: the description -> "The quality of the image is {level}." (inference)
Two-stage inference: the model describes the image (stage-1 question, greedy), then is asked the stage-2 question about
that description with no image, and the level is read as a closed-set softmax over the five level tokens after
"The quality of the image is" (metrics.closed_set_scores) -> score = probs @ [1..5]. One-stage inference: the model
answers the stage-1 question with the image and writes its own conclusion; the level is read from the generation
logits at the step where it writes its level word (teacher-forced "Overall, the quality of the image is" after its text
where it wrote none, counted). Instability: the same input answered R times by sampling in each of S sessions; with
fixed_description the description is written once (greedy) and only what follows it is sampled (two_stage: the
stage-2 answer; one_stage: the conclusion), which separates the inference's instability from the perception's.
The paper's prompt templates (its Fig. 4) are not in its text; the prompts below are this repo's.
"""
import json
import os
import random
import re
import statistics
import time
from collections import Counter

import torch
from tqdm import tqdm

from iqa_vlm.common import atomic_write_json, atomic_write_jsonl, read_json, release_folder_lock
from iqa_vlm.data import LEVEL_PREFIX, LEVELS, claim_output, record_written, closed_set_meta, closed_set_token_ids, read_closed_set, encode_prompts, load_records, write_splits
from iqa_vlm.metrics import closed_set_scores, mean_std, score_metrics
from iqa_vlm.model import eval_device, eval_out, last_token_logits, load_checkpoint, load_evaluated, to_device

# ----------------------------------------------------------------------------- prompts
DESCRIBE_QUESTION = "Describe the low level quality of this image."   # one-stage and stage 1 (the interpret view's too)
STAGE2_TEMPLATE = "Here is how the image looks: {description}\nHow would you rate the quality of the image?"
CONCLUSION_PREFIX = "Overall, the quality of the image is"   # the demo's conclusion: "... is {level}."
VIEWS = ("one_stage", "stage1", "stage2")
# Every word above is in the tiny model's vocabulary (model.TINY_WORDS): an unknown word would become <unk>.


def one_stage_record(rid, image, feedback, **extra):
    return {"id": rid, "image": image,
            "conversations": [{"from": "human", "value": "<image>\n" + DESCRIBE_QUESTION}, {"from": "gpt", "value": feedback}],
            "task": "reason", "view": "one_stage", **extra}


def stage1_record(rid, image, text, **extra):
    """image -> `text`, the description without its conclusion."""
    return {"id": rid, "image": image,
            "conversations": [{"from": "human", "value": "<image>\n" + DESCRIBE_QUESTION}, {"from": "gpt", "value": text}],
            "task": "describe", "view": "stage1", **extra}


def stage2_record(rid, text, level=None, **extra):
    """Text only (no image): the description `text` -> the level. Without a level, a prompt to answer (inference)."""
    conv = [{"from": "human", "value": STAGE2_TEMPLATE.format(description=text)}]
    conv += [{"from": "gpt", "value": f"{LEVEL_PREFIX} {level}."}] if level else []
    return {"id": rid, "conversations": conv, "task": "score", "view": "stage2", **({"level": level} if level else {}), **extra}


# ----------------------------------------------------------------------------- the splitter
# The concluding sentence is found among the last CONCLUSION_WINDOW sentences (the last one first): it must have a
# quality cue word and name exactly one level. Wording -> level; matched case-insensitively on word boundaries, the
# longer phrase first ("very poor" is bad, not poor). "low"/"high" followed by "level" are not levels ("low-level").
LEVEL_WORDING = {
    "bad": ["bad", "very poor", "very low", "very bad", "extremely poor", "extremely low", "terrible", "awful", "unacceptable"],
    "poor": ["poor", "low", "below average"],
    "fair": ["fair", "average", "acceptable", "moderate", "medium", "mediocre"],
    "good": ["good", "high", "above average"],
    "excellent": ["excellent", "very good", "very high", "extremely good", "extremely high", "outstanding", "exceptional",
                  "perfect", "superb"],
}
_PHRASE_LEVEL = {p: level for level, phrases in LEVEL_WORDING.items() for p in phrases}
_LEVEL_RE = re.compile(r"\b(" + "|".join(re.escape(p).replace(r"\ ", r"\s+") + (r"(?![\s-]+level)" if p in ("low", "high") else "")
                                          for p in sorted(_PHRASE_LEVEL, key=len, reverse=True)) + r")\b", re.I)
_CUE_RE = re.compile(r"\b(quality|rate|rated|rating)\b", re.I)
_NEGATED_RE = re.compile(r"(\bnot|\bnever|\bhardly|n't)\s+(\w+\s+)?$", re.I)   # right before the level phrase
_SENTENCE_RE = re.compile(r"\S.*?(?:[.!?]+(?=\s|$)|$)", re.S)
CONCLUSION_WINDOW = 2


def sentences(text):
    """[(start, end)] character spans of the sentences of `text` (a sentence ends at . ! ? before a space or the end)."""
    return [(m.start(), m.end()) for m in _SENTENCE_RE.finditer(text) if m.group().strip()]


def _sentence_level(sentence):
    """(level, level phrase's start in the sentence, reason): reason is None when the sentence concludes on one level,
    'no cue' / 'no level' when it is no conclusion, else why its conclusion cannot be used."""
    if not _CUE_RE.search(sentence):
        return None, None, "no cue"
    found = list(_LEVEL_RE.finditer(sentence))
    if not found:
        return None, None, "no level"
    levels = sorted({_PHRASE_LEVEL[re.sub(r"\s+", " ", m.group(1).lower())] for m in found}, key=LEVELS.index)
    if len(levels) > 1:
        return None, None, f"the concluding sentence names several levels ({', '.join(levels)})"
    if any(_NEGATED_RE.search(sentence[:m.start()]) for m in found):
        return None, None, "the concluding sentence negates its level"
    return levels[0], found[-1].start(), None


def split_feedback(text):
    """Pathway feedback -> {description, conclusion, level, level_phrase, conclusion_start, level_start, position,
    reason}. `level` is None (and `reason` says why) when no concluding sentence naming the quality is found.
    description: the text without its concluding sentence; level_start: where the level phrase starts in `text`
    (text[:level_start] is the feedback up to the level word); position: 'last' or 'second to last'."""
    spans = sentences(text)
    out = {"description": None, "conclusion": None, "level": None, "level_phrase": None, "conclusion_start": None,
           "level_start": None, "position": None, "reason": None}
    if not spans:
        return {**out, "reason": "empty text"}
    for back, (a, b) in enumerate(reversed(spans[-CONCLUSION_WINDOW:])):
        level, at, reason = _sentence_level(text[a:b])
        if reason in ("no cue", "no level"):
            continue  # not a conclusion; the one before may be
        if reason:
            return {**out, "reason": reason}
        description = (text[:a].rstrip() + " " + text[b:].lstrip()).strip()
        return {**out, "description": description, "conclusion": text[a:b], "level": level,
                "level_phrase": _LEVEL_RE.match(text, a + at).group(1), "conclusion_start": a, "level_start": a + at,
                "position": ["last", "second to last"][back]}
    return {**out, "reason": "no concluding sentence naming the quality"}


def answer_level(text):
    """The level an answer concludes on (the last sentences naming the quality and one level), or None."""
    return split_feedback(text)["level"] if text else None


# ----------------------------------------------------------------------------- pathway views (prepare_data.py --task pathway)
PATHWAY_KEEP = ("source", "ref", "level", "mos", "mos_norm", "std", "label", "severity")  # carried into every view


def pathway_parts(r):
    """One pathway record -> (split_feedback's parts + question + answer, None), or (None, (reason, text)) when it
    cannot be split into a description and a concluding level."""
    answers = [t["value"] for t in r["conversations"] if t["from"] == "gpt"]
    questions = [t for t in r["conversations"] if t["from"] == "human"]
    if len(answers) != 1 or len(questions) != 1:
        return None, ("not one question and one answer", json.dumps(r["conversations"])[:400])
    if not r.get("image"):
        return None, ("no image", answers[0])
    parts = split_feedback(answers[0])
    if parts["level"] is None:
        return None, (parts["reason"], answers[0])
    if not parts["description"]:
        return None, ("nothing before the concluding sentence", answers[0])
    if r.get("level") and r["level"] != parts["level"]:  # the demo's level comes from its MOS
        return None, ("the conclusion's level differs from the record's level", answers[0])
    return {**parts, "question": questions[0]["value"].replace("<image>", "").strip(), "answer": answers[0]}, None


def make_pathway(splits, out, meta):
    """Pathway feedback (a description ending in a conclusion that names the quality) -> three views, each a prepared
    folder: OUT/one_stage (image -> whole feedback), OUT/stage1 (image -> description without its conclusion),
    OUT/stage2 (text only: description -> "The quality of the image is {level}."). splits: {split: records whose one
    answer turn is the feedback}. The split point is the concluding sentence naming the quality (split_feedback);
    records where none is found, or that are not one question and one answer, are counted and excluded, with examples,
    in OUT/meta.json (written last)."""
    views = {v: {name: [] for name in splits} for v in VIEWS}
    excluded, examples, position, levels = Counter(), {}, Counter(), Counter()

    def exclude(r, reason, text):
        excluded[reason] += 1
        if len(examples.setdefault(reason, [])) < 5:
            examples[reason].append({"id": r.get("id"), "text": text if len(text) <= 400 else "..." + text[-400:]})

    for name, recs in splits.items():
        for r in recs:
            parts, why = pathway_parts(r)
            if parts is None:
                exclude(r, *why)
                continue
            extra = {k: r[k] for k in PATHWAY_KEEP if r.get(k) is not None}
            extra.update(level=parts["level"], description=parts["description"])
            position[parts["position"]] += 1
            levels[parts["level"]] += 1
            views["one_stage"][name].append(one_stage_record(r["id"], r["image"], parts["answer"], question=parts["question"],
                                                             **extra))
            views["stage1"][name].append(stage1_record(r["id"], r["image"], parts["description"], **extra))
            views["stage2"][name].append(stage2_record(r["id"], parts["description"], **extra))
    n_in = sum(len(recs) for recs in splits.values())
    out = claim_output(out)
    if os.path.exists(os.path.join(out, "meta.json")):
        os.unlink(os.path.join(out, "meta.json"))
    record_written(out, list(VIEWS) + ["meta.json"])
    meta = {k: v for k, v in meta.items() if k not in closed_set_meta()}
    for v in VIEWS:  # stage 1's answers are descriptions: no closed set; the other two end in a level
        write_splits(os.path.join(out, v), views[v], {**meta, "task": "pathway", "view": v,
                                                      **(closed_set_meta() if v != "stage1" else {})})
    report = {"records_in": n_in, "kept": n_in - sum(excluded.values()), "excluded": dict(excluded),
              "excluded_examples": examples, "conclusion_position": dict(position), "levels": dict(levels),
              "level_wording": LEVEL_WORDING}
    meta = {**meta, "task": "pathway", **closed_set_meta(), "views": {v: os.path.join(out, v) for v in VIEWS}, "split": report,
            "counts": {v: {name: len(recs) for name, recs in views[v].items()} for v in VIEWS}}
    atomic_write_json(os.path.join(out, "meta.json"), meta)
    record_written(out, list(VIEWS) + ["meta.json"], replace=True)  # an earlier prepare's other files there go
    release_folder_lock(out)
    print(f"pathway: {report['kept']} of {n_in} records split into description + conclusion "
          f"(conclusion last {position['last']}, second to last {position['second to last']}); excluded "
          f"{dict(excluded) or 'none'} -> {out}/{{{','.join(VIEWS)}}}, {out}/meta.json")
    return meta



# ----------------------------------------------------------------------------- the instability ratio
def instability_ratio(answers):
    """answers: per sample, its R answers as levels (None = outside the level set, e.g. unparsed). A sample is unstable
    when its answers disagree or any falls outside the level set. -> {n, n_unstable, n_disagree, n_outside, ratio}."""
    if not answers:
        raise ValueError("instability_ratio: no samples")
    disagree = sum(len({a for a in ans if a in LEVELS}) > 1 for ans in answers)  # two different levels
    outside = sum(any(a is None or a not in LEVELS for a in ans) for ans in answers)
    unstable = sum(len(set(ans)) > 1 or any(a is None or a not in LEVELS for a in ans) for ans in answers)
    return {"n": len(answers), "n_unstable": unstable, "n_disagree": disagree, "n_outside": outside,
            "ratio": unstable / len(answers)}


# ----------------------------------------------------------------------------- inference pieces
def describe_prompt(record):
    """The stage-1 / one-stage question about a record's image (whatever the record's own conversation says)."""
    return {"id": record.get("id"), "image": record["image"],
            "conversations": [{"from": "human", "value": "<image>\n" + DESCRIBE_QUESTION}]}


def generate(model, processor, prompts, max_new_tokens, device, sample=None, repeats=1, logits=False, prefixes=None):
    """Free answers to prompt records (left padding). sample: None = greedy, else {temperature, top_k, top_p}; each
    prompt is answered `repeats` times (consecutive in the output); prefixes: per prompt, the start of the answer,
    teacher-forced (the texts returned are what follows it). -> texts, and with logits=True also, per answer,
    (its new token ids, the logits of each step)."""
    enc, _ = encode_prompts(processor, prompts, answer_prefix=prefixes, padding_side="left")
    enc = to_device(enc, model, device)
    kw = dict(do_sample=True, num_return_sequences=repeats, **sample) if sample else dict(do_sample=False)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, return_dict_in_generate=True, output_logits=logits, **kw)
    new = out.sequences[:, enc["input_ids"].shape[1]:]
    texts = [t.strip() for t in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]
    if not logits:
        return texts
    steps = torch.stack(out.logits, 1)  # [B, steps, V]
    return texts, [(new[i], steps[i]) for i in range(len(texts))]


def description_part(text):
    """A feedback up to its concluding sentence (the whole text when it has none)."""
    parts = split_feedback(text)
    return text[:parts["conclusion_start"]].rstrip() if parts["level"] else text


def strip_conclusion(text):
    """A generated description with any conclusion it wrote removed -> (description, whether one was removed)."""
    parts = split_feedback(text)
    return (parts["description"], True) if parts["level"] else (text, False)


@torch.no_grad()
def two_stage_batch(model, processor, records, level_ids, max_new_tokens, device, describer=None, answer_prefix=LEVEL_PREFIX):
    """Stage 1: describe each image (greedy); stage 2: the description alone -> closed-set level probabilities after
    "The quality of the image is". -> per record {description, conclusion_removed, probs, score}."""
    described = generate(describer or model, processor, [describe_prompt(r) for r in records], max_new_tokens, device)
    out = []
    for text in described:
        desc, removed = strip_conclusion(text)
        out.append({"description": desc, "conclusion_removed": removed})
    enc, last = encode_prompts(processor, [stage2_record(r.get("id"), o["description"]) for r, o in zip(records, out)],
                               answer_prefix=answer_prefix)
    probs, score, _ = closed_set_scores(last_token_logits(model, to_device(enc, model, device), last), level_ids)
    for o, p, s in zip(out, probs.tolist(), score.tolist()):
        o.update(probs=p, score=s)
    return out


@torch.no_grad()
def one_stage_batch(model, processor, records, level_ids, max_new_tokens, device):
    """The whole feedback with the image (greedy); closed-set level probabilities from the generation logits at the
    last step that wrote a level token. Where no level token was written, "Overall, the quality of the image is" is
    teacher-forced after the generated text and read there (forced=True). -> per record {feedback, probs, score, forced}."""
    texts, steps = generate(model, processor, [describe_prompt(r) for r in records], max_new_tokens, device, logits=True)
    level_set, eos = set(level_ids), processor.tokenizer.eos_token_id
    out, rows, forced = [], [], []
    for i, (text, (ids, logits)) in enumerate(zip(texts, steps)):
        ids = ids.tolist()
        end = ids.index(eos) if eos in ids else len(ids)
        at = [t for t in range(end) if ids[t] in level_set]
        out.append({"feedback": text, "forced": not at})
        if at:
            rows.append(logits[at[-1]])
        else:
            forced.append(i)
            rows.append(None)
    for i in forced:  # one record at a time: each has its own teacher-forced prefix
        enc, last = encode_prompts(processor, [describe_prompt(records[i])],
                                   answer_prefix=(texts[i] + " " + CONCLUSION_PREFIX).strip())
        rows[i] = last_token_logits(model, to_device(enc, model, device), last)[0]
    probs, score, _ = closed_set_scores(torch.stack(rows), level_ids)
    for o, p, s in zip(out, probs.tolist(), score.tolist()):
        o.update(probs=p, score=s)
    return out


# ----------------------------------------------------------------------------- evaluate.py two-stage / instability
def eval_data_dir(d):
    """A pathway folder (prepare_data.py --task pathway) -> its one_stage view, which has the images; a stage1/stage2
    view -> its sibling one_stage view; any other folder as it is (score data: image + MOS)."""
    if os.path.isdir(os.path.join(d, "one_stage")):
        return os.path.join(d, "one_stage")
    parent, base = os.path.split(os.path.normpath(d))
    if base in ("stage1", "stage2") and os.path.isdir(os.path.join(parent, "one_stage")):
        return os.path.join(parent, "one_stage")
    return d


def eval_records(data_dirs, split, limit, seed=0):
    """Records with an image and a target (mos_norm, else mos, else level); at most `limit`, a seeded draw in file order."""
    dirs = [eval_data_dir(d) for d in data_dirs.split(",") if d]
    records = [r for r in load_records(dirs, split) if r.get("image")
               and (r.get("mos_norm") is not None or r.get("mos") is not None or r.get("level") in LEVELS)]
    if not records:
        raise SystemExit(f"no records with an image and a MOS or level in {dirs} ({split})")
    if limit and len(records) > limit:
        keep = sorted(random.Random(f"limit:{seed}").sample(range(len(records)), limit))
        records = [records[i] for i in keep]
    return records, ",".join(dirs)


def target_of(r):
    """What SRCC/PLCC compare the score with: mos_norm (higher = better for every source), else mos, else the level 1..5."""
    for key in ("mos_norm", "mos"):
        if r.get(key) is not None:
            return r[key]
    return LEVELS.index(r["level"]) + 1


def setup(ckpt, model, data, split, limit, seed, describer, allow_unfinished=False):
    """What the evaluations run on: (model, processor, name, records, data, the describer or None)."""
    device, dtype = eval_device()
    vlm, processor, cfg, name = load_evaluated(ckpt, model, device, dtype, allow_unfinished)
    name = ckpt or name
    records, data = eval_records(data or cfg.get("data") or "data/demo_pathway", split, limit, seed)
    describer = load_checkpoint(describer, dtype=dtype, device=device)[0].eval() if describer else None
    return vlm, processor, name, records, data, describer, device


def evaluate(pipeline="two_stage", ckpt=None, model=None, data=None, split="test", out=None, batch_size=32, limit=0,
             seed=0, max_new_tokens=64, describer=None, latency_n=16, allow_unfinished=False):
    """evaluate.py two-stage: `pipeline` two_stage (describe, then rate the description text only) or one_stage (the
    whole feedback with the image; the level read where the model writes it). SRCC/PLCC per source, latency per
    image. describer: a checkpoint that writes the stage-1 descriptions (two_stage; default: the model itself).
    Writes OUT/eval_{pipeline}.json and OUT/predictions_{pipeline}.jsonl."""
    if pipeline not in ("one_stage", "two_stage"):
        raise SystemExit(f"--pipeline must be one_stage or two_stage, got {pipeline!r}")
    if describer and pipeline != "two_stage":
        raise SystemExit("--describer is for --pipeline two_stage (the model that writes the stage-1 description)")
    mode, model_name = pipeline, model
    model, processor, name, records, data, describer_model, device = setup(ckpt, model, data, split, limit, seed, describer,
                                                                           allow_unfinished)
    out = eval_out(out, ckpt, model_name)
    max_new = max_new_tokens
    words, prefix = read_closed_set(data, expect=LEVELS)
    level_ids = closed_set_token_ids(processor, words, prefix)
    os.makedirs(out, exist_ok=True)

    def run(recs):
        if mode == "two_stage":
            return two_stage_batch(model, processor, recs, level_ids, max_new, device, describer_model, prefix)
        return one_stage_batch(model, processor, recs, level_ids, max_new, device)

    # latency: the whole pipeline for one image at a time (batch 1), on the first --latency_n records
    latency = []
    for r in records[:latency_n]:
        t0 = time.perf_counter()
        run([r])
        latency.append(time.perf_counter() - t0)
    preds = []
    for start in tqdm(range(0, len(records), batch_size), desc=mode, unit="batch"):
        recs = records[start:start + batch_size]
        for r, o in zip(recs, run(recs)):
            probs = o.pop("probs")
            preds.append({"id": r.get("id"), "source": r.get("source"), "mos": r.get("mos"), "target": target_of(r),
                          "level": r.get("level"), "pred_level": LEVELS[probs.index(max(probs))],
                          "probs": [round(x, 5) for x in probs], "score": round(o.pop("score"), 5), **o})
    batched = (time.perf_counter() - t0) / len(records)
    metrics = score_metrics([{**p, "mos": p["target"]} for p in preds])
    result = {"task": mode, "model": name, "data": data, "split": split, "n": len(records),
              "per_source": metrics, "max_new_tokens": max_new, "describer": describer,
              "score": "closed-set softmax over the level tokens -> probs @ [1..5]; SRCC/PLCC against mos_norm",
              "latency_s_per_image": {"batch_1_median": statistics.median(latency) if latency else None,
                                      "batch_1_mean": statistics.fmean(latency) if latency else None,
                                      "batch_1_n": len(latency), "batched": batched, "batch_size": batch_size,
                                      "device": device, "threads": torch.get_num_threads()}}
    if mode == "two_stage":
        result["conclusion_removed_from_description"] = sum(p["conclusion_removed"] for p in preds)
    else:
        result["forced_conclusion"] = sum(p["forced"] for p in preds)
    result["examples"] = [{k: p[k] for k in ("id", "level", "pred_level", "description" if mode == "two_stage" else "feedback")}
                          for p in preds[:5]]
    atomic_write_json(os.path.join(out, f"eval_{mode}.json"), result)
    atomic_write_jsonl(os.path.join(out, f"predictions_{mode}.jsonl"), preds)
    lat = result["latency_s_per_image"]
    for source, m in metrics.items():
        print(f"{mode} {name} on {source} ({m['n']} images): SRCC {fmt(m['srcc'])} PLCC {fmt(m['plcc'])} "
              f"level accuracy {100 * m.get('level_accuracy', float('nan')):.1f}%")
    print(f"latency per image: {fmt(lat['batch_1_median'])} s median at batch 1 ({lat['batch_1_n']} images), "
          f"{batched:.4f} s batched ({batch_size}) on {device}"
          + (f"; descriptions that carried a conclusion (removed): {result['conclusion_removed_from_description']}"
             if mode == "two_stage" else f"; no level word generated (conclusion teacher-forced): {result['forced_conclusion']}")
          + f" -> {out}/eval_{mode}.json, predictions_{mode}.jsonl")
    return result


def fmt(x):
    return "-" if x is None else f"{x:.4f}"


def instability(pipeline="two_stage", sessions=3, repeats=5, temperature=1.0, fixed_description=False, ckpt=None,
                model=None, data=None, split="test", out=None, batch_size=32, limit=0, seed=0, max_new_tokens=64,
                describer=None, allow_unfinished=False):
    """evaluate.py instability: `sessions` sessions; in each, every record answered `repeats` times by sampling (the seed
    of session s is seed + s). one_stage: the sampled feedbacks' concluding levels. two_stage: sampled descriptions,
    each answered once by sampling the stage-2 question (text only). fixed_description: describe once (greedy) and
    sample only what follows the description. -> OUT/instability_{pipeline}[_fixed].json (+ _answers.jsonl), a table."""
    if pipeline not in ("one_stage", "two_stage"):
        raise SystemExit(f"--pipeline must be one_stage or two_stage, got {pipeline!r}")
    if sessions < 1 or repeats < 2:
        raise SystemExit(f"--sessions {sessions} --repeats {repeats}: need at least 1 session and 2 repeats")
    if temperature <= 0:
        raise SystemExit("instability samples: --temperature must be > 0")
    if describer and pipeline != "two_stage":
        raise SystemExit("--describer is for --pipeline two_stage (the model that writes the stage-1 description)")
    mode, n_sessions, max_new, model_name = pipeline, sessions, max_new_tokens, model
    model, processor, name, records, data, describer, device = setup(ckpt, model, data, split, limit, seed, describer,
                                                                     allow_unfinished)
    out = eval_out(out, ckpt, model_name)
    os.makedirs(out, exist_ok=True)
    # top_k 0 and top_p 1: sample from the whole softmax at the temperature (no truncation)
    sample = {"temperature": temperature, "top_k": 0, "top_p": 1.0}
    per_session, rows = [], []
    for s in range(n_sessions):
        session_seed = seed + s
        torch.manual_seed(session_seed)
        answers, t0 = [], time.perf_counter()
        for start in tqdm(range(0, len(records), batch_size), desc=f"instability session {s + 1}/{n_sessions}", unit="batch"):
            recs = records[start:start + batch_size]
            prompts = [describe_prompt(r) for r in recs]
            if fixed_description:  # the greedy description, once per sample; only what follows it is sampled
                greedy = generate(describer or model, processor, prompts, max_new, device)
                descs = [strip_conclusion(t)[0] if mode == "two_stage" else description_part(t) for t in greedy]
                descs = [d for d in descs for _ in range(repeats)]
            else:
                texts = generate(describer or model, processor, prompts, max_new, device, sample=sample, repeats=repeats)
                descs = [strip_conclusion(t)[0] for t in texts] if mode == "two_stage" else [None] * len(texts)
            if mode == "two_stage":
                said = generate(model, processor, [stage2_record(None, d) for d in descs], 16, device, sample=sample)
            elif fixed_description:  # one_stage: the conclusion written after its own (greedy) description
                rest = generate(model, processor, [p for p in prompts for _ in range(repeats)], 16, device, sample=sample,
                                prefixes=descs)
                said = [(d + " " + t).strip() for d, t in zip(descs, rest)]
            else:
                said = texts
            for i, r in enumerate(recs):
                mine = slice(i * repeats, (i + 1) * repeats)
                levels = [answer_level(a) for a in said[mine]]
                answers.append(levels)
                rows.append({"session": s, "seed": session_seed, "id": r.get("id"), "level": r.get("level"), "answers": levels,
                             "texts": said[mine], **({"descriptions": descs[mine]} if mode == "two_stage" or fixed_description else {})})
        per_session.append({"session": s, "seed": session_seed, **instability_ratio(answers), "seconds": round(time.perf_counter() - t0, 2)})
    mean, std = mean_std([x["ratio"] for x in per_session])
    result = {"task": f"instability_{mode}", "model": name, "data": data, "split": split, "n": len(records),
              "sessions": n_sessions, "repeats": repeats, "sampling": {**sample, "do_sample": True},
              "sampled": ("only what follows the greedy description (" + ("the stage-2 answer" if mode == "two_stage" else
                          "the conclusion") + ")") if fixed_description else
                         "the whole answer: the description, then the stage-2 answer to it" if mode == "two_stage" else
                         "the whole answer: description and conclusion",
              "max_new_tokens": {"answer": max_new, **({"stage2_answer": 16} if mode == "two_stage" else {})},
              "definition": "share of samples whose R sampled answers disagree or include one outside the level set "
                            "(no concluding level found); mean and sample std (n - 1) over sessions",
              "ratio_mean": mean, "ratio_std": std, "per_session": per_session,
              "unstable_examples": [x for x in rows if len(set(x["answers"])) > 1 or None in x["answers"]][:5]}
    tag = f"{mode}_fixed" if fixed_description else mode
    atomic_write_json(os.path.join(out, f"instability_{tag}.json"), result)
    atomic_write_jsonl(os.path.join(out, f"instability_{tag}_answers.jsonl"), rows)
    print(f"instability, {mode}, {name}: {len(records)} samples x {repeats} answers, temperature {temperature:g}, "
          f"sampled: {result['sampled']}")
    print(f"{'session':>8} {'seed':>6} {'unstable':>9} {'disagree':>9} {'outside':>8} {'ratio':>8}")
    for x in per_session:
        print(f"{x['session']:>8} {x['seed']:>6} {x['n_unstable']:>9} {x['n_disagree']:>9} {x['n_outside']:>8} {100 * x['ratio']:>7.2f}%")
    print(f"instability ratio: {100 * mean:.2f} % +- {100 * std:.2f} % over {n_sessions} sessions -> {out}/instability_{tag}.json")
    return result


# ----------------------------------------------------------------------------- the paper's tables beside a run's
PAPER_QUALITY = {"SPAQ": {"baseline": (0.1364, 0.1267), "Q-Instruct": (0.3229, 0.3087), "Q-Align": (0.8381, 0.7341),
                          "Ours": (0.7437, 0.7935)},
                 "KONIQ": {"baseline": (0.0262, 0.0419), "Q-Instruct": (0.1191, 0.1153), "Q-Align": (0.8340, 0.7086),
                           "Ours": (0.5854, 0.6460)},
                 "LIVE": {"baseline": (0.0475, 0.0537), "Q-Instruct": (0.4938, 0.5173), "Q-Align": (0.89845, 0.8180),
                          "Ours": (0.7006, 0.7161)},
                 "CSIQ": {"baseline": (-0.0205, -0.0298), "Q-Instruct": (0.3641, 0.3586), "Q-Align": (0.7419, 0.6348),
                          "Ours": (0.5201, 0.6176)}}          # Table 2: SRCC / PLCC, mPLUG-Owl2-7B
PAPER_TIME = {"baseline": 0.1605, "Q-Instruct": 0.1467, "Q-Align": 0.1603, "Ours": 0.2044}  # Table 2's last row
PAPER_INSTABILITY = {"SPAQ+KONIQ": ((22.00, 0.08), (12.39, 0.52)), "LIVE": ((16.27, 0.47), (4.09, 0.11)),
                     "CSIQ": ((13.17, 0.27), (6.08, 0.63))}   # Table 1: %, (one-stage, two-stage), mean (+- std)
PAPER_SOURCES = {"SPAQ": "spaq", "KONIQ": "koniq10k", "LIVE": "live", "CSIQ": "csiq"}


def paper_tables(one_stage=None, two_stage=None, instability=(), baseline=None, q_align=None):
    """analyze.py two-stage-tables: Table 2 (SRCC/PLCC per dataset and the inference time per image) in the paper's
    columns: baseline (evaluate.py two-stage --pipeline one_stage on the untuned model: eval_one_stage.json),
    Q-Instruct (the one-stage run, `one_stage`), Q-Align (evaluate.py score on its released checkpoint:
    eval_score.json, no latency) and ours (`two_stage`: eval_two_stage.json); Table 1 (instability ratio per dataset)
    from evaluate.py instability outputs, given per dataset as 'NAME=ONE_STAGE_DIR,TWO_STAGE_DIR'; each beside the
    paper's numbers."""
    systems = [(name, d, f) for name, d, f in (("baseline", baseline, "eval_one_stage.json"),
                                               ("Q-Instruct", one_stage, "eval_one_stage.json"),
                                               ("Q-Align", q_align, "eval_score.json"),
                                               ("Ours", two_stage, "eval_two_stage.json")) if d]
    runs = {name: read_json(os.path.join(d, f)) for name, d, f in systems}
    lines = ["Table 2: SRCC/PLCC, this run's columns then the paper's (baseline, Q-Instruct = one-stage, Q-Align, "
             "Ours = two-stage)", f"{'dataset':12s}" + "".join(f"{n:>17s}" for n in runs) + "   paper: "
             + "  ".join(PAPER_QUALITY["SPAQ"])]
    cell = lambda m: "-" if m is None or m.get("srcc") is None else f"{m['srcc']:.4f}/{m['plcc']:.4f}"
    for name, source in PAPER_SOURCES.items():
        ours = "".join(f"{cell(r['per_source'].get(source)):>17s}" for r in runs.values())
        paper = "  ".join(f"{a:.4f}/{b:.4f}" for a, b in PAPER_QUALITY[name].values())
        lines.append(f"{name:12s}{ours}   {paper}")
    latency = lambda r: r.get("latency_s_per_image", {}).get("batch_1_median")
    times = "".join(f"{'-' if latency(r) is None else f'{latency(r):.4f}s':>17s}" for r in runs.values())
    lines.append(f"{'Inference':12s}{times}   " + "  ".join(f"{t:.4f}s" for t in PAPER_TIME.values())
                 + "   (s per image, batch 1, median)")
    if instability:
        lines += ["", "Table 1: instability ratio (%), mean (+- std) over sessions",
                  f"{'dataset':12s}{'one-stage':>18s}{'two-stage':>18s}   paper: one-stage, two-stage"]
    for item in instability:
        name, _, dirs = item.partition("=")
        if dirs.count(",") != 1:
            raise SystemExit(f"--instability {item!r}: expected NAME=ONE_STAGE_DIR,TWO_STAGE_DIR")
        found = []
        for mode, d in zip(("one_stage", "two_stage"), dirs.split(",")):
            tag = next((t for t in (mode, f"{mode}_fixed") if os.path.isfile(os.path.join(d, f"instability_{t}.json"))), mode)
            r = read_json(os.path.join(d, f"instability_{tag}.json"))
            found.append(f"{100 * r['ratio_mean']:.2f} (+-{100 * r['ratio_std']:.2f})")
        paper = PAPER_INSTABILITY.get(name)
        lines.append(f"{name:12s}{found[0]:>18s}{found[1]:>18s}   "
                     + (", ".join(f"{m:.2f} (+-{s:.2f})" for m, s in paper) if paper else "-"))
    print("\n".join(lines))
    return "\n".join(lines)
