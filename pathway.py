"""Two-stage quality reasoning (issue 6): pathway feedback split into perception and inference, one-stage and
two-stage inference, the instability ratio.

    import pathway as PW
    PW.split_feedback("The image is blurry. Overall, the quality of the image is poor.")
    # {'description': 'The image is blurry.', 'conclusion': 'Overall, the quality of the image is poor.', 'level': 'poor', ...}
    PW.instability_ratio([["poor", "poor"], ["poor", "fair"], ["good", None]])   # ratio 2/3

    python evaluate.py --two_stage --ckpt out/pw_stage2 --data data/demo_pathway    # SRCC/PLCC, latency
    python evaluate.py --one_stage --ckpt out/pw_one_stage --data data/demo_pathway
    python evaluate.py --two_stage --instability 3,5 --ckpt out/pw_stage2 --data data/demo_pathway
    python evaluate.py --one_stage --instability 3,5 --fixed_description --ckpt out/pw_one_stage --data data/demo_pathway

Pathway feedback (Q-Instruct / Q-Pathway) is a low-level description that ends in an overall conclusion naming the
quality. Three views of it (prepare_data.py --task pathway):
  one_stage  image -> the whole feedback (description + conclusion)
  stage1     image -> the description without its conclusion (perception)
  stage2     text only: the description -> "The quality of the image is {level}." (inference)
Two-stage inference: the model describes the image (stage-1 question, greedy), then is asked the stage-2 question about
that description with no image, and the level is read as a closed-set softmax over the five level tokens after
"The quality of the image is" (scoring.closed_set_scores) -> score = probs @ [1..5]. One-stage inference: the model
answers the stage-1 question with the image and writes its own conclusion; the level is read from the generation
logits at the step where it writes its level word (teacher-forced "Overall, the quality of the image is" after its text
where it wrote none, counted). Instability: the same input answered R times by sampling in each of S sessions; with
--fixed_description the description is written once (greedy) and only what follows it is sampled (two_stage: the
stage-2 answer; one_stage: the conclusion), which separates the inference's instability from the perception's.
"""
import os
import re
import statistics
import sys
import time

import torch

from data import LEVELS, answer_prefix_text, encode_prompts, load_records, to_messages
from scoring import SCORE_PREFIX, closed_set_scores, score_metrics

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
    conv += [{"from": "gpt", "value": f"{SCORE_PREFIX} {level}."}] if level else []
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


def mean_std(values):
    """(mean, sample standard deviation with n - 1; 0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# ----------------------------------------------------------------------------- inference pieces
def _to(enc, model, device):
    return {k: v.to(device, model.dtype) if v.is_floating_point() else v.to(device) for k, v in enc.items()}


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
    enc = _to(enc, model, device)
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
def two_stage_batch(model, processor, records, level_ids, max_new_tokens, device, describer=None):
    """Stage 1: describe each image (greedy); stage 2: the description alone -> closed-set level probabilities after
    "The quality of the image is". -> per record {description, conclusion_removed, probs, score}."""
    from evaluate import last_token_logits
    described = generate(describer or model, processor, [describe_prompt(r) for r in records], max_new_tokens, device)
    out = []
    for text in described:
        desc, removed = strip_conclusion(text)
        out.append({"description": desc, "conclusion_removed": removed})
    enc, last = encode_prompts(processor, [stage2_record(r.get("id"), o["description"]) for r, o in zip(records, out)],
                               answer_prefix=SCORE_PREFIX)
    probs, score, _ = closed_set_scores(last_token_logits(model, _to(enc, model, device), last), level_ids)
    for o, p, s in zip(out, probs.tolist(), score.tolist()):
        o.update(probs=p, score=s)
    return out


@torch.no_grad()
def one_stage_batch(model, processor, records, level_ids, max_new_tokens, device):
    """The whole feedback with the image (greedy); closed-set level probabilities from the generation logits at the
    last step that wrote a level token. Where no level token was written, "Overall, the quality of the image is" is
    teacher-forced after the generated text and read there (forced=True). -> per record {feedback, probs, score, forced}."""
    from evaluate import last_token_logits
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
        rows[i] = last_token_logits(model, _to(enc, model, device), last)[0]
    probs, score, _ = closed_set_scores(torch.stack(rows), level_ids)
    for o, p, s in zip(out, probs.tolist(), score.tolist()):
        o.update(probs=p, score=s)
    return out


# ----------------------------------------------------------------------------- the sequence that ends at the quality token
def quality_inputs(model, processor, records, mode, description="generated", max_new_tokens=64, device="cpu"):
    """For the analyses: per record, the rendered text that ends right before the quality level word, so the last
    token's output predicts the level (the "quality token"), as the pipeline of `mode` would see it. -> dicts with
    id, image (or None), text, answer_start (char where the assistant's answer starts), desc_span (chars of the
    description in text), level (the record's), forced (one-stage: no level phrase found, the demo's
    conclusion prefix was appended).
      two_stage: the stage-2 question about the description (text only), answer "The quality of the image is"
      one_stage: the image, the stage-1 question, answer = the feedback up to its level word
    description: 'generated' (the model's own, greedy) or 'reference' (the record's)."""
    if description == "generated":
        texts = []
        for s in range(0, len(records), 16):
            texts += generate(model, processor, [describe_prompt(r) for r in records[s:s + 16]], max_new_tokens, device)
    else:
        texts = [reference_feedback(r, mode) for r in records]
    items = []
    for r, text in zip(records, texts):
        if mode == "two_stage":
            desc = strip_conclusion(text)[0]
            msgs = to_messages(stage2_record(r.get("id"), desc)["conversations"], False)
            full = answer_prefix_text(processor, msgs, SCORE_PREFIX)
            answer_start = len(full) - len(SCORE_PREFIX)
            d0 = full.find(desc)
            image, forced = None, False
        else:
            parts = split_feedback(text)
            if parts["level"]:
                prefix, desc_len, forced = text[:parts["level_start"]].rstrip(), parts["conclusion_start"], False
            else:
                prefix, desc_len, forced = (text + " " + CONCLUSION_PREFIX).strip(), len(text), True
            msgs = to_messages(describe_prompt(r)["conversations"], True)
            full = answer_prefix_text(processor, msgs, prefix)
            answer_start = len(full) - len(prefix)
            desc = text[:desc_len].rstrip()
            d0 = answer_start if full.endswith(prefix) else -1
            image = r["image"]
        if d0 < 0:
            raise ValueError(f"record {r.get('id')}: the chat template changed the text, the description is not found "
                             f"in the rendered prompt {full!r}")
        items.append({"id": r.get("id"), "image": image, "text": full, "answer_start": answer_start,
                      "desc_span": (d0, d0 + len(desc)), "description": desc, "level": r.get("level"), "forced": forced})
    return items


def reference_feedback(record, mode):
    """The record's own feedback (one_stage view: the whole answer) or description (mode two_stage)."""
    answer = [t["value"] for t in record["conversations"] if t["from"] == "gpt"]
    if not answer:
        raise ValueError(f"record {record.get('id')}: no answer to take the reference description from")
    return record.get("description", answer[-1]) if mode == "two_stage" else answer[-1]


# ----------------------------------------------------------------------------- evaluate.py --one_stage / --two_stage / --instability
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
    import random
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


def load_for_eval(args, ap, device, dtype):
    from model import load_checkpoint, load_model
    if args.ckpt and len(args.ckpt) > 1:
        ap.error("--one_stage / --two_stage / --instability take one --ckpt")
    if args.ckpt:
        model, processor, cfg = load_checkpoint(args.ckpt[0], dtype=dtype, device=device)
        name, data, out = args.ckpt[0], args.data or cfg["data"], args.out or args.ckpt[0]
    elif args.model:
        model, processor = load_model(args.model, dtype=dtype, device=device)
        name, data = f"untuned {args.model}", args.data or "data/demo_pathway"
        out = args.out or os.path.join("out", "untuned_" + os.path.basename(args.model.rstrip("/")))
    else:
        ap.error("give --ckpt DIR (a train.py output) or --model NAME")
    model.eval()
    return model, processor, name, data, out


def main_pathway(args, ap):
    """evaluate.py --one_stage | --two_stage [--instability S,R]: see the module docstring."""
    from common import atomic_write_json, atomic_write_jsonl
    from data import closed_set_token_ids
    if args.one_stage == args.two_stage:
        ap.error("give exactly one of --one_stage and --two_stage (which pipeline answers)")
    if args.fixed_description and not args.instability:
        ap.error("--fixed_description is an --instability option")
    mode = "two_stage" if args.two_stage else "one_stage"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, processor, name, data, out = load_for_eval(args, ap, device, dtype)
    records, data = eval_records(data, args.split, args.limit, args.seed)
    describer = None
    if args.describer:
        if mode != "two_stage":
            ap.error("--describer is for --two_stage (the model that writes the stage-1 description)")
        from model import load_checkpoint
        describer = load_checkpoint(args.describer, dtype=dtype, device=device)[0].eval()
    max_new = args.max_new_tokens or 64
    level_ids = closed_set_token_ids(processor, LEVELS, SCORE_PREFIX)
    os.makedirs(out, exist_ok=True)
    if args.instability:
        return run_instability(args, ap, model, processor, records, mode, name, data, out, max_new, device, describer)

    def run(recs):
        if mode == "two_stage":
            return two_stage_batch(model, processor, recs, level_ids, max_new, device, describer)
        return one_stage_batch(model, processor, recs, level_ids, max_new, device)

    # latency: the whole pipeline for one image at a time (batch 1), on the first --latency_n records
    latency = []
    for r in records[:args.latency_n]:
        t0 = time.perf_counter()
        run([r])
        latency.append(time.perf_counter() - t0)
    preds, t0 = [], time.perf_counter()
    for start in range(0, len(records), args.batch_size):
        recs = records[start:start + args.batch_size]
        for r, o in zip(recs, run(recs)):
            probs = o.pop("probs")
            preds.append({"id": r.get("id"), "source": r.get("source"), "mos": r.get("mos"), "target": target_of(r),
                          "level": r.get("level"), "pred_level": LEVELS[probs.index(max(probs))],
                          "probs": [round(x, 5) for x in probs], "score": round(o.pop("score"), 5), **o})
        done = min(start + args.batch_size, len(records))
        print(f"\r{mode}: {done}/{len(records)} ({done / (time.perf_counter() - t0):.1f} images/s)", end="", file=sys.stderr)
    print(file=sys.stderr)
    batched = (time.perf_counter() - t0) / len(records)
    metrics = score_metrics([{**p, "mos": p["target"]} for p in preds])
    result = {"task": mode, "model": name, "data": data, "split": args.split, "n": len(records),
              "per_source": metrics, "max_new_tokens": max_new, "describer": args.describer,
              "score": "closed-set softmax over the level tokens -> probs @ [1..5]; SRCC/PLCC against mos_norm",
              "latency_s_per_image": {"batch_1_median": statistics.median(latency) if latency else None,
                                      "batch_1_mean": statistics.fmean(latency) if latency else None,
                                      "batch_1_n": len(latency), "batched": batched, "batch_size": args.batch_size,
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
          f"{batched:.4f} s batched ({args.batch_size}) on {device}"
          + (f"; descriptions that carried a conclusion (removed): {result['conclusion_removed_from_description']}"
             if mode == "two_stage" else f"; no level word generated (conclusion teacher-forced): {result['forced_conclusion']}")
          + f" -> {out}/eval_{mode}.json, predictions_{mode}.jsonl")
    return result


def fmt(x):
    return "-" if x is None else f"{x:.4f}"


def run_instability(args, ap, model, processor, records, mode, name, data, out, max_new, device, describer=None):
    """S sessions; in each, every record answered R times by sampling (the seed of session s is --seed + s). one_stage:
    R sampled feedbacks, each's concluding level. two_stage: R sampled descriptions, each answered once by sampling
    the stage-2 question (text only). -> OUT/instability_{mode}.json (+ _answers.jsonl), a printed table."""
    from common import atomic_write_json, atomic_write_jsonl
    try:
        n_sessions, repeats = (int(x) for x in args.instability.split(","))
    except ValueError:
        ap.error(f"--instability expects S,R (sessions, repeats), e.g. 3,5; got {args.instability!r}")
    if n_sessions < 1 or repeats < 2:
        ap.error(f"--instability {args.instability}: need at least 1 session and 2 repeats")
    if args.temperature <= 0:
        ap.error("--instability samples: --temperature must be > 0")
    # top_k 0 and top_p 1: sample from the whole softmax at the temperature (no truncation)
    sample = {"temperature": args.temperature, "top_k": 0, "top_p": 1.0}
    sessions, rows = [], []
    for s in range(n_sessions):
        seed = args.seed + s
        torch.manual_seed(seed)
        answers, t0 = [], time.perf_counter()
        for start in range(0, len(records), args.batch_size):
            recs = records[start:start + args.batch_size]
            prompts = [describe_prompt(r) for r in recs]
            if args.fixed_description:  # the greedy description, once per sample; only what follows it is sampled
                greedy = generate(describer or model, processor, prompts, max_new, device)
                descs = [strip_conclusion(t)[0] if mode == "two_stage" else description_part(t) for t in greedy]
                descs = [d for d in descs for _ in range(repeats)]
            else:
                texts = generate(describer or model, processor, prompts, max_new, device, sample=sample, repeats=repeats)
                descs = [strip_conclusion(t)[0] for t in texts] if mode == "two_stage" else [None] * len(texts)
            if mode == "two_stage":
                said = generate(model, processor, [stage2_record(None, d) for d in descs], 16, device, sample=sample)
            elif args.fixed_description:  # one_stage: the conclusion written after its own (greedy) description
                rest = generate(model, processor, [p for p in prompts for _ in range(repeats)], 16, device, sample=sample,
                                prefixes=descs)
                said = [(d + " " + t).strip() for d, t in zip(descs, rest)]
            else:
                said = texts
            for i, r in enumerate(recs):
                mine = slice(i * repeats, (i + 1) * repeats)
                levels = [answer_level(a) for a in said[mine]]
                answers.append(levels)
                rows.append({"session": s, "seed": seed, "id": r.get("id"), "level": r.get("level"), "answers": levels,
                             "texts": said[mine], **({"descriptions": descs[mine]} if mode == "two_stage" or args.fixed_description else {})})
            print(f"\rinstability session {s + 1}/{n_sessions}: {len(answers)}/{len(records)}", end="", file=sys.stderr)
        print(file=sys.stderr)
        sessions.append({"session": s, "seed": seed, **instability_ratio(answers), "seconds": round(time.perf_counter() - t0, 2)})
    mean, std = mean_std([x["ratio"] for x in sessions])
    result = {"task": f"instability_{mode}", "model": name, "data": data, "split": args.split, "n": len(records),
              "sessions": n_sessions, "repeats": repeats, "sampling": {**sample, "do_sample": True},
              "sampled": ("only what follows the greedy description (" + ("the stage-2 answer" if mode == "two_stage" else
                          "the conclusion") + ")") if args.fixed_description else
                         "the whole answer: the description, then the stage-2 answer to it" if mode == "two_stage" else
                         "the whole answer: description and conclusion",
              "max_new_tokens": {"answer": max_new, **({"stage2_answer": 16} if mode == "two_stage" else {})},
              "definition": "share of samples whose R sampled answers disagree or include one outside the level set "
                            "(no concluding level found); mean and sample std (n - 1) over sessions",
              "ratio_mean": mean, "ratio_std": std, "per_session": sessions,
              "unstable_examples": [x for x in rows if len(set(x["answers"])) > 1 or None in x["answers"]][:5]}
    tag = f"{mode}_fixed" if args.fixed_description else mode
    atomic_write_json(os.path.join(out, f"instability_{tag}.json"), result)
    atomic_write_jsonl(os.path.join(out, f"instability_{tag}_answers.jsonl"), rows)
    print(f"instability, {mode}, {name}: {len(records)} samples x {repeats} answers, temperature {args.temperature:g}, "
          f"sampled: {result['sampled']}")
    print(f"{'session':>8} {'seed':>6} {'unstable':>9} {'disagree':>9} {'outside':>8} {'ratio':>8}")
    for x in sessions:
        print(f"{x['session']:>8} {x['seed']:>6} {x['n_unstable']:>9} {x['n_disagree']:>9} {x['n_outside']:>8} {100 * x['ratio']:>7.2f}%")
    print(f"instability ratio: {100 * mean:.2f} % +- {100 * std:.2f} % over {n_sessions} sessions -> {out}/instability_{tag}.json")
    return result
