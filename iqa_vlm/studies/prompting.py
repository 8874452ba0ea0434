"""Prompting study: 3 psychophysical protocols x 3 prompting styles, no-reference or full-reference.

Wu, Ma, Liang, Yang, Zhang, "A comprehensive study of multimodal large language models for image quality
assessment" (ECCV 2024); its prompts and published numbers are in prompting_paper.py, its difficult-sample selection
in hard_samples.py, the nine systems' table (with the expert baselines) in prompting_table.py.

    python evaluate.py prompting --protocol single --prompting standard --model tiny --data data/demo --limit 32
    python evaluate.py prompting --protocol double --prompting cot --model llava-hf/llava-onevision-qwen2-7b-ov-hf --data data/score
    python evaluate.py prompting --protocol multiple --prompting icl --reference true --model ... --data data/distortion
    python evaluate.py prompting-table --model ... --data data/score --fr_data data/distortion   # all 18 systems

Protocols: single (one image -> a score 0..100), double (two images -> 1 first better, 0 second better, 2 same),
multiple (four images -> one rank per image, 0 lowest .. 3 highest, ties allowed). Prompting: standard, cot (describe,
then score), icl (a worked example with its human answer first). reference=True (FR): the reference image comes first.

--prompts paper (default): the study's prompts (prompting_paper.PAPER_PROMPTS), the text first and then the images in
order, as its authors' code sends them; the icl example is drawn from the train split to fit what the prompt states
(a score of 50; the first image better; ranks 0, 1, 2, 3), the authors' example images being unreleased. Answers are
read as their code reads them: the numbers after the first "Score:", exactly as many as asked; an answer that does not
give them is replaced by a seeded random one (`--unparsed random`, the authors' fallback once their re-asks fail; greedy
decoding would only repeat itself) or dropped (`--unparsed drop`). --prompts plain: this repo's earlier wording (images
labelled "Image k:", an answer line), with a lenient parser. Queries as the authors': each image anchors 5 pairs
(double) or 2 groups of four (multiple) with random partners of its group (a source; FR: its reference).

Aggregation of double / multiple answers: Thurstone Case V by MAP (pairwise.thurstone_map, the authors'), over one
count matrix per source (NR) or per reference image (FR); --aggregation bradley_terry as an alternative. Metrics: SRCC
and PLCC after the 4-parameter logistic fit per source; FR also per reference image (fitted per reference, NaN as 0,
averaged), as the authors compute it for FR-KADID, Aug-KADID and TQD. Writes OUT/eval_prompting_{tag}.json,
OUT/answers_prompting_{tag}.jsonl (one row per query) and OUT/scores_prompting_{tag}.jsonl (one row per image: id,
score), which `analyze.py hard-samples --pred` reads.
"""
import os
import random
import re
import sys
import time
from collections import defaultdict

import numpy as np
import torch
from tqdm import tqdm

from iqa_vlm.api_model import AUTHORS_MAX_TOKENS, ApiModel, is_api
from iqa_vlm.common import atomic_write_json, atomic_write_jsonl
from iqa_vlm.data import load_image, load_records
from iqa_vlm.metrics import plcc, srcc
from iqa_vlm.model import check_finished, eval_device, eval_out, load_evaluated, read_run_config, to_device
from iqa_vlm.pairwise import BT_PRIOR, bradley_terry, comparison_counts, thurstone_map
from iqa_vlm.studies.prompting_paper import ICL_STATED, prompt_text as paper_prompt

N_IMAGES = {"single": 1, "double": 2, "multiple": 4}   # images judged per query (plus the reference in FR)
PROMPTINGS = ("standard", "cot", "icl")
PROMPT_SETS = ("paper", "plain")
AGGREGATIONS = ("thurstone", "bradley_terry")
MAX_NEW_TOKENS = {"standard": 48, "icl": 48, "cot": 256}  # default when --max_new_tokens is 0 ("Score: [first: 0, ...]")
ROUNDS = {"single": 1, "double": 5, "multiple": 2}       # queries each image anchors (the authors')


# ----------------------------------------------------------------------------- prompt texts
def _images(idx):
    """[2, 3, 4, 5] -> 'images 2, 3, 4 and 5'."""
    return f"image {idx[0]}" if len(idx) == 1 else "images " + ", ".join(map(str, idx[:-1])) + f" and {idx[-1]}"


def task_sentence(protocol, idx, ref=None):
    """The question about the images at positions idx (1-based); ref = the reference's position (FR)."""
    if protocol == "single":
        fr = f", compared with the reference image {ref}," if ref else ""
        return f"Rate the perceptual quality of image {idx[0]}{fr} with a score from 0 to 100, where 0 is the worst and 100 the best."
    fr = f", {'two' if protocol == 'double' else 'four'} distorted versions of the reference image {ref}" if ref else ""
    if protocol == "double":
        a, b = idx
        return (f"Compare the perceptual quality of image {a} and image {b}{fr}: answer 1 if image {a} is better, "
                f"0 if image {b} is better, 2 if they look the same.")
    return (f"Rank the perceptual quality of {_images(idx)}{fr}: give one number per image in this order, from 0 for "
            f"the lowest quality to 3 for the highest; images of equal quality get the same number.")


ANSWER_FORM = {"single": "the score", "double": "1, 0 or 2", "multiple": "the four numbers, separated by commas"}


def format_sentence(protocol, prompting, idx):
    if prompting == "cot":
        return (f"First describe the perceptual quality of {_images(idx)}: sharpness, noise, colors, contrast, "
                f"artifacts. Then write a last line that starts with Answer, followed by {ANSWER_FORM[protocol]}.")
    return f"Answer with {ANSWER_FORM[protocol]} only."


def build_prompt(protocol, prompting, paths, ref_path=None, example=None, prompt_set="paper"):
    """One query -> (content items of the user turn, image paths in the order of the image items, the positions
    (1-based) of the judged query images, which the answer may name).

    paper: the study's prompt text, then every image in order (the icl example's reference and images first).
    plain: every image item follows a label 'Image k:', adjacent texts joined by a newline; example (icl):
    {"paths": [...], "ref_path": path or None, "answer": "73"}, shown first with its human answer."""
    if prompt_set == "paper":
        shown = (([example["ref_path"]] if ref_path else []) + list(example["paths"]) if prompting == "icl" else [])
        first = len(shown) + (1 if ref_path else 0) + 1
        images = shown + ([ref_path] if ref_path else []) + list(paths)
        content = [{"type": "text", "text": paper_prompt(ref_path is not None, protocol, prompting)}]
        return content + [{"type": "image"} for _ in images], images, list(range(first, first + len(paths)))
    if prompt_set != "plain":
        raise ValueError(f"prompt set {prompt_set!r}: expected one of {PROMPT_SETS}")
    content, images = [], []

    def text(t):
        if content and content[-1]["type"] == "text":
            content[-1]["text"] += "\n" + t
        else:
            content.append({"type": "text", "text": t})

    def show(group_paths, group_ref):
        positions, ref_pos = [], None
        for k, p in enumerate(([group_ref] if group_ref else []) + list(group_paths)):
            images.append(p)
            text(f"Image {len(images)}:")
            content.append({"type": "image"})
            if group_ref and k == 0:
                ref_pos = len(images)
            else:
                positions.append(len(images))
        return positions, ref_pos

    if prompting == "icl":
        if example is None:
            raise ValueError("icl prompting needs a worked example")
        text("Here is an example with the human answer.")
        idx, ref = show(example["paths"], example.get("ref_path"))
        text(task_sentence(protocol, idx, ref))
        text(f"Answer: {example['answer']}")
        text("Now your question.")
    idx, ref = show(paths, ref_path)
    text(task_sentence(protocol, idx, ref))
    text(format_sentence(protocol, prompting, idx))
    return content, images, idx


def content_text(content):
    """Content items as one readable string ('<image>' for images), for logs and tests."""
    return "".join("<image>\n" if c["type"] == "image" else c["text"] for c in content)


# ----------------------------------------------------------------------------- answer parsing
# Free answers are messy: "Score: 73/100", "I'd say 85.", a description ending in "Answer: 1, 0, 3, 2". Each parser
# takes the first answer-shaped value after the last cue word (answer, score, rating, rank...); without a cue, the
# value the whole answer holds, but only if it holds one: several different candidates are ambiguous -> None.
CUE = re.compile(r"\b(?:answer|score|scores|rating|rate|rated|ranking|ranks|rank)\b")
NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?:\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?(?![\w])")
INTEGER = re.compile(r"(?<![\w.])(\d+)(?![\w])(?!\.\d)")


def _name_images(text, idx=None):
    """'image 2' -> 'first image' / 'second image' when 2 is idx[0] / idx[1], else 'image'; lists of positions go.
    (Positions are numbers too: 'image 2 is better' must not read as the answer 2.)"""
    text = re.sub(r"\bimages\s+\d+(?:\s*(?:,|and|&)\s*\d+)*", "images", text)

    def one(m):
        k = int(m.group(1))
        return "first image" if idx and k == idx[0] else "second image" if idx and k == idx[1] else "image"
    return re.sub(r"\bimage\s*#?\s*(\d+)", one, text)


def _tail(text):
    cues = list(CUE.finditer(text))
    return text[cues[-1].end():] if cues else None


def parse_single(text):
    """A score on 0..100 (an 'N/D' or 'N out of D' is rescaled to 100), or None."""
    text = _name_images(text.lower())

    def scores(t):
        out = []
        for m in NUMBER.finditer(t):
            v, d = float(m.group(1)), m.group(2)
            if d is not None:
                if float(d) <= 0:
                    continue
                v = v * 100 / float(d)
            if 0 <= v <= 100:
                out.append(v)
        return out
    tail = _tail(text)
    if tail is not None and scores(tail):
        return scores(tail)[0]
    anywhere = set(scores(text))
    return anywhere.pop() if len(anywhere) == 1 else None


def parse_double(text, idx=(1, 2)):
    """1 (the first image is better), 0 (the second is), 2 (the same), or None. idx: the two images' positions."""
    text = _name_images(text.lower(), idx)
    tail = _tail(text)
    codes = lambda t: [int(m.group(1)) for m in INTEGER.finditer(t) if m.group(1) in ("0", "1", "2")]
    if tail is not None and codes(tail):
        return codes(tail)[0]
    if codes(text):
        return codes(text)[0] if len(set(codes(text))) == 1 else None
    # words: the nearest 'first'/'second' before a comparative, within one sentence
    m = list(re.finditer(r"\b(first|second)\b(?:(?!\b(?:first|second)\b)[^.;!?]){0,40}?\b(better|higher|worse|lower)\b", text))
    if m:
        first, better = m[-1].group(1) == "first", m[-1].group(2) in ("better", "higher")
        return 1 if first == better else 0
    if re.search(r"\b(same|equal|identical|similar|no difference)\b", text):
        return 2
    return None


def parse_multiple(text):
    """Four ranks in 0..3 (higher = better, ties allowed), or None: the first run of four such integers after the
    last cue word, else the one run in the whole answer."""
    text = _name_images(text.lower())

    def runs(t):
        nums = [int(m.group(1)) for m in INTEGER.finditer(t)]
        return [nums[s:s + 4] for s in range(len(nums) - 3) if all(0 <= v <= 3 for v in nums[s:s + 4])]
    tail = _tail(text)
    if tail is not None and runs(tail):
        return runs(tail)[0]
    found = {tuple(r) for r in runs(text)}
    return list(found.pop()) if len(found) == 1 else None


SCORE_NUMBER = re.compile(r"[-+]?\d*\.\d+|\d+")


def parse_paper(protocol, text):
    """The authors' reading: the numbers between the first 'Score:' and the next one (their split("Score:")[1]),
    exactly 1 (single, double) or 4 (multiple); anything else -> None. A double answer other than 0, 1, 2 is read but,
    as in their count matrix, adds no comparison (to_pairs)."""
    parts = text.split("Score:")
    if len(parts) < 2:
        return None
    values = [float(v) for v in SCORE_NUMBER.findall(parts[1])]
    n = 4 if protocol == "multiple" else 1
    if len(values) != n:
        return None
    return values[0] if protocol == "single" else int(values[0]) if protocol == "double" else [int(v) for v in values]


def random_answer(protocol, rng):
    """The authors' fallback for an answer that never parses: randint(0, 100), randint(0, 2), four randint(0, 3)."""
    if protocol == "single":
        return float(rng.randint(0, 100))
    if protocol == "double":
        return rng.randint(0, 2)
    return [rng.randint(0, 3) for _ in range(4)]


def parse_answer(protocol, text, idx, prompt_set="plain"):
    if prompt_set == "paper":
        return parse_paper(protocol, text)
    if protocol == "single":
        return parse_single(text)
    if protocol == "double":
        return parse_double(text, idx)
    return parse_multiple(text)


# ----------------------------------------------------------------------------- from answers to scores
def to_pairs(protocol, ids, parsed):
    """One parsed answer -> [(a, b, s)]: s = 1 a better, 0 b better, 0.5 equal."""
    if parsed is None:
        return []
    if protocol == "double":
        return [(ids[0], ids[1], {1: 1.0, 0: 0.0, 2: 0.5}[parsed])] if parsed in (0, 1, 2) else []
    if protocol == "multiple":
        return [(ids[i], ids[j], 1.0 if parsed[i] > parsed[j] else 0.0 if parsed[i] < parsed[j] else 0.5)
                for i in range(4) for j in range(i + 1, 4)]
    raise ValueError(f"no pairwise preferences in the {protocol} protocol")


def human_answer(protocol, targets):
    """The answer a human gives, from the MOS on [0, 1] (higher = better) of the images shown."""
    if protocol == "single":
        return str(round(100 * targets[0]))
    if protocol == "double":
        return "1" if targets[0] > targets[1] else "0" if targets[0] < targets[1] else "2"
    return ", ".join(str(sum(u < t for u in targets)) for t in targets)  # rank = how many are worse


# ----------------------------------------------------------------------------- which images go together
def target(r):
    """What SRCC is measured against: mos_norm (on [0, 1], higher = better for every source), else mos."""
    return r["mos_norm"] if r.get("mos_norm") is not None else r["mos"]


def group_key(r, reference):
    """Images compared in one query share a source (NR) or a reference image (FR)."""
    return (r.get("source"), r["ref_image"]) if reference else (r.get("source"),)


def sample_queries(records, protocol, reference, rounds, seed):
    """Index tuples into records, reproducible from the seed, as the authors draw them: every image anchors `rounds`
    queries, itself first and then k - 1 distinct random partners from its group (a source; FR: its reference image).
    Groups smaller than a query are skipped; -> (queries, skipped image count)."""
    k = N_IMAGES[protocol]
    if k == 1:
        return [(i,) for i in range(len(records))], 0
    rng = random.Random(f"prompting:{protocol}:{seed}")
    groups = defaultdict(list)
    for i, r in enumerate(records):
        groups[group_key(r, reference)].append(i)
    queries, skipped = [], 0
    for key in sorted(groups, key=str):
        members = groups[key]
        if len(members) < k:
            skipped += len(members)
            continue
        for i in members:
            others = [m for m in members if m != i]
            queries += [(i, *rng.sample(others, k - 1)) for _ in range(rounds)]
    return queries, skipped


def pick_example(records, protocol, reference, seed, prompt_set="paper"):
    """The icl worked example from `records` (the train split), seeded. paper: images that make the prompt's stated
    answer true (ICL_STATED: the image nearest a score of 50; two images, the first better; four with rising
    quality, ranks 0..3 in order); plain: any images of one group whose MOS differ, with their human answer."""
    k, rng = N_IMAGES[protocol], random.Random(f"icl:{protocol}:{seed}")
    groups = defaultdict(list)
    for r in records:
        groups[group_key(r, reference)].append(r)
    need = k if prompt_set == "paper" else min(k, 2)  # distinct MOS values the example needs
    usable = [g for key, g in sorted(groups.items(), key=lambda kv: str(kv[0]))
              if len(g) >= k and len({target(r) for r in g}) >= need]
    if not usable:
        raise ValueError(f"no {k} images of one {'reference' if reference else 'source'} with different MOS for the icl example")
    if prompt_set == "paper" and protocol == "single":
        chosen = [min((r for g in usable for r in g), key=lambda r: (abs(100 * target(r) - ICL_STATED["single"]), str(r["id"])))]
    else:
        group = rng.choice(usable)
        for _ in range(1000):
            chosen = rng.sample(group, k)
            if len({target(r) for r in chosen}) >= need:
                break
        if prompt_set == "paper":  # the stated order: first better (double), rising quality (multiple)
            chosen = sorted(chosen, key=target, reverse=protocol == "double")
    return {"ids": [r["id"] for r in chosen], "paths": [r["image"] for r in chosen],
            "ref_path": chosen[0]["ref_image"] if reference else None,
            "answer": human_answer(protocol, [target(r) for r in chosen])}


# ----------------------------------------------------------------------------- the model
def check_multi_image(processor, n, name):
    """Fails clearly unless the processor turns a prompt with two image items into two images' worth of tokens."""
    from PIL import Image
    if n < 2:
        return
    img = Image.new("RGB", (64, 64), (128, 96, 64))
    counts = []
    for k in (1, 2):
        msgs = [{"role": "user", "content": [{"type": "image"}] * k + [{"type": "text", "text": "Compare."}]}]
        try:
            text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            enc = processor(text=[text], images=[[img] * k], return_tensors="pt")
        except Exception as e:
            raise ValueError(f"{name} cannot take {k} images in one prompt ({type(e).__name__}: {e}); these prompts "
                             f"need {n}. Use a multi-image model (e.g. llava-hf/llava-onevision-qwen2-7b-ov-hf)") from None
        token = getattr(processor, "image_token_id", None)
        if token is None:
            return  # no way to count: the processor accepted both images, let the model run
        counts.append(int((enc["input_ids"] == token).sum()))
    if counts[1] <= counts[0]:
        raise ValueError(f"{name}: a prompt with 2 image items gets {counts[1]} image tokens, one with 1 gets {counts[0]}: "
                         f"its chat template or processor keeps only one image. These prompts need {n}.")


@torch.no_grad()
def generate_answers(model, processor, prompts, batch_size=8, max_new_tokens=24, device="cpu"):
    """[(content, image paths, ...)] -> greedy free answers, one string each (left padding for batched generation)."""
    answers = []
    processor.tokenizer.padding_side = "left"
    for start in tqdm(range(0, len(prompts), batch_size), desc="prompting", unit="batch"):
        batch = prompts[start:start + batch_size]
        texts = [processor.apply_chat_template([{"role": "user", "content": p[0]}], add_generation_prompt=True, tokenize=False)
                 for p in batch]
        images = [[load_image(path) for path in p[1]] for p in batch]
        enc = processor(text=texts, images=images, return_tensors="pt", padding=True)
        enc = to_device(enc, model, device)
        new = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)[:, enc["input_ids"].shape[1]:]
        answers += processor.tokenizer.batch_decode(new, skip_special_tokens=True)
    return [a.strip() for a in answers]


# ----------------------------------------------------------------------------- evaluate.py prompting
def load_prompting_records(data_dirs, split, reference):
    """Records with an image and a MOS (any task), each id once; FR needs each record's reference image path."""
    seen, records = set(), []
    for r in load_records(data_dirs, split):
        if r.get("image") and r.get("mos") is not None and r.get("id") not in seen:
            seen.add(r.get("id"))
            records.append(r)
    if reference:
        missing = [r for r in records if not r.get("ref_image")]
        if missing:
            raise SystemExit(f"--reference: {len(missing)} of {len(records)} records of {data_dirs} ({split}.jsonl) have no "
                             f"'ref_image' field (the path of the reference image), e.g. {missing[0].get('id')}. "
                             f"prepare_data.py writes it for LIVE, CSIQ, KADID-10k and TID2013; the demo set has no "
                             f"reference images, so it is NR only.")
    return records


def correlations(per_image, reference=False):
    """{source (and 'all' when there are several): n_images, n_scored, srcc, plcc (after the 4-parameter logistic)}
    over scored images; FR adds srcc_per_ref / plcc_per_ref, each fitted per reference image (NaN as 0) and averaged."""
    out, sources = {}, sorted({p["source"] for p in per_image}, key=str)
    for src in sources + (["all"] if len(sources) > 1 else []):
        mine = [p for p in per_image if src == "all" or p["source"] == src]
        scored = [p for p in mine if p["score"] is not None]
        pred, tgt = [p["score"] for p in scored], [p["target"] for p in scored]
        m = {"n_images": len(mine), "n_scored": len(scored), "srcc": srcc(pred, tgt), "plcc": plcc(pred, tgt, logistic=True)}
        if reference:
            per_ref = defaultdict(list)
            for p in scored:
                per_ref[p["ref_image"]].append(p)
            cells = [(srcc([p["score"] for p in ps], [p["target"] for p in ps]),
                      plcc([p["score"] for p in ps], [p["target"] for p in ps], logistic=True)) for ps in per_ref.values()]
            zero = lambda v: 0.0 if v is None or v != v else v
            m.update(n_refs=len(cells), srcc_per_ref=float(np.mean([zero(a) for a, _ in cells])) if cells else None,
                     plcc_per_ref=float(np.mean([zero(b) for _, b in cells])) if cells else None)
        out[src] = m
    return out


def draw_limit(records, limit, seed, reference):
    """At most `limit` records, a seeded draw (test files are ordered by content, so not the first N); FR draws whole
    references, so that the images compared in one query still share theirs."""
    if not limit or limit >= len(records):
        return records
    rng = random.Random(f"limit:{seed}")
    if not reference:
        return [records[i] for i in sorted(rng.sample(range(len(records)), limit))]
    refs = sorted({r["ref_image"] for r in records})
    rng.shuffle(refs)
    keep, n = set(), 0
    for ref in refs:
        if n >= limit:
            break
        keep.add(ref)
        n += sum(r["ref_image"] == ref for r in records)
    return [r for r in records if r["ref_image"] in keep]


def aggregate(protocol, records, queries, prompts, answers, reference=False, prompt_set="paper", aggregation="thurstone",
              unparsed="random", bt_prior=BT_PRIOR, seed=0):
    """Answers -> (rows: one per query, per_image: one per record with its score, or None when nothing about it was
    answered). single: the parsed score; double / multiple: Thurstone MAP (or Bradley-Terry) over the pairwise
    preferences, one fit per group (a source; FR: a reference image)."""
    rows, pairs, single_scores, rng = [], defaultdict(list), {}, random.Random(f"unparsed:{protocol}:{seed}")
    for q, (content, paths, idx), answer in zip(queries, prompts, answers):
        ids = [records[i]["id"] for i in q]
        parsed = parse_answer(protocol, answer, idx, prompt_set)
        used = parsed if parsed is not None or unparsed == "drop" else random_answer(protocol, rng)
        rows.append({"ids": ids, "images": paths, "answer": answer, "parsed": parsed, "used": used,
                     "target": [target(records[i]) for i in q]})
        if protocol == "single" and used is not None:
            single_scores[ids[0]] = used
        elif protocol != "single":
            pairs[group_key(records[q[0]], reference)] += to_pairs(protocol, ids, used)
    scores = dict(single_scores)
    for group_pairs in pairs.values():
        if not group_pairs:
            continue
        if aggregation == "thurstone":
            C, items = comparison_counts(group_pairs)
            scores.update(zip(items, thurstone_map(C).tolist()))
        else:
            scores.update(bradley_terry(group_pairs, bt_prior))
    n_answers = defaultdict(int)
    for row in rows:
        for i in row["ids"]:
            n_answers[i] += row["parsed"] is not None
    per_image = [{"id": r["id"], "source": r.get("source"), "ref_image": r.get("ref_image"), "mos": r["mos"],
                  "mos_norm": r.get("mos_norm"), "target": target(r),
                  "score": None if r["id"] not in scores else round(scores[r["id"]], 6), "parsed_queries": n_answers[r["id"]]}
                 for r in records]
    return rows, per_image


def default_out(model, kind="prompting"):
    """out/prompting_NAME: a hosted model's folder is named api_..., apart from the local model of the same name."""
    name = "api_" + model[len("api:"):].replace("/", "_") if is_api(model) else os.path.basename(model.rstrip("/"))
    return os.path.join("out", f"{kind}_{name}")


def open_api(model, out, api_base=None, api_key_env="OPENAI_API_KEY", api_concurrency=4, api_retries=6, no_cache=False,
             api_temperature=None, api_detail=None):
    """--model api:MODEL: the hosted model (api_model.ApiModel), its responses cached in OUT/api_cache/."""
    return ApiModel(model, api_base, api_key_env, None if no_cache else os.path.join(out, "api_cache"), api_concurrency,
                    api_retries, temperature=api_temperature, detail=api_detail)


def evaluate(protocol="single", prompting="standard", reference=False, ckpt=None, model=None, data=None, split="test",
             out=None, batch_size=32, limit=0, seed=0, max_new_tokens=0, rounds=0, icl_split="train", prompts="paper",
             aggregation="thurstone", unparsed="random", bt_prior=BT_PRIOR, allow_unfinished=False, loaded=None, **api):
    """evaluate.py prompting: one protocol x prompting style, NR or FR (`reference`), on a checkpoint, an untuned model
    or a hosted one (--model api:MODEL and the api_* options of open_api). Writes OUT/eval_prompting_{tag}.json,
    answers_prompting_{tag}.jsonl and scores_prompting_{tag}.jsonl. loaded: (model, processor) already in memory
    (prompting_table runs 18 systems on one load; (ApiModel, None) for a hosted model)."""
    if protocol not in N_IMAGES or prompting not in PROMPTINGS:
        raise SystemExit(f"--protocol must be one of {list(N_IMAGES)} and --prompting one of {list(PROMPTINGS)}")
    if prompts not in PROMPT_SETS or aggregation not in AGGREGATIONS or unparsed not in ("random", "drop"):
        raise SystemExit(f"--prompts must be one of {PROMPT_SETS}, --aggregation one of {AGGREGATIONS}, --unparsed random or drop")
    if ckpt:
        cfg = read_run_config(ckpt)
        check_finished(cfg, ckpt, allow_unfinished)
        name, data_dirs, out = f"{cfg['model']} [{cfg['trainable']}]", data or cfg["data"], eval_out(out, ckpt, None)
    elif model:
        name, data_dirs = model, data or "data/demo"
        out = out or default_out(model)
    else:
        raise SystemExit("give --ckpt DIR or --model NAME")
    tag = f"{protocol}_{prompting}{'_fr' if reference else ''}"
    records = draw_limit(load_prompting_records(data_dirs, split, reference), limit, seed, reference)  # bad data fails fast
    if len(records) < N_IMAGES[protocol]:
        raise SystemExit(f"{len(records)} records with an image and a MOS in {data_dirs} ({split}); "
                         f"the {protocol} protocol needs at least {N_IMAGES[protocol]}")
    device, dtype = eval_device()
    hosted = is_api(model)
    if hosted:  # the key is checked now, before any image is read
        vlm, processor = loaded or (open_api(model, out, **api), None)
        device = "api"
    else:
        vlm, processor = loaded or load_evaluated(ckpt, model, device, dtype, allow_unfinished=True)[:2]  # checked above
    per_prompt = (N_IMAGES[protocol] + reference) * (2 if prompting == "icl" else 1)
    try:
        if not hosted:
            check_multi_image(processor, per_prompt, name)
    except ValueError as e:
        raise SystemExit(f"--protocol {protocol} --prompting {prompting}: {e}") from None
    example = None
    if prompting == "icl":
        try:
            example = pick_example(load_prompting_records(data_dirs, icl_split, reference), protocol, reference, seed, prompts)
        except ValueError as e:
            raise SystemExit(f"--prompting icl draws its worked example from the {icl_split} split of {data_dirs}: {e}") from None
    queries, skipped = sample_queries(records, protocol, reference, rounds or ROUNDS[protocol], seed)
    if not queries:
        raise SystemExit(f"no {protocol} query could be formed: no group (same source{', same reference' if reference else ''}) "
                         f"has {N_IMAGES[protocol]} images")
    built = [build_prompt(protocol, prompting, [records[i]["image"] for i in q],
                          records[q[0]]["ref_image"] if reference else None, example, prompts) for q in queries]
    max_new = max_new_tokens or (AUTHORS_MAX_TOKENS if hosted else MAX_NEW_TOKENS[prompting])
    print(f"{name}: {protocol} stimulus, {prompting} prompting, {'FR' if reference else 'NR'}, {prompts} prompts: "
          f"{len(records)} images, {len(queries)} queries of {per_prompt} images, max_new_tokens {max_new}", file=sys.stderr)
    t0 = time.time()
    answers = vlm.answer(built, max_new) if hosted else generate_answers(vlm, processor, built, batch_size, max_new, device)
    seconds = time.time() - t0
    rows, per_image = aggregate(protocol, records, queries, built, answers, reference, prompts, aggregation, unparsed,
                                bt_prior, seed)
    per_source = correlations(per_image, reference)
    n_parsed = sum(row["parsed"] is not None for row in rows)
    how = ("parsed score" if protocol == "single" else
           "Thurstone Case V MAP, scores min-max to [0, 100] per group" if aggregation == "thurstone" else
           f"Bradley-Terry log-strength (MM fit; ties = half a win; prior {bt_prior} virtual tied games)")
    result = {"task": "prompting", "protocol": protocol, "prompting": prompting, "reference": bool(reference),
              "prompts": prompts, "model": name, "data": data_dirs, "split": split, "seed": seed, "limit": limit,
              "n_images": len(records), "skipped_images": skipped, "n_queries": len(rows), "images_per_prompt": per_prompt,
              "max_new_tokens": max_new, "parsed": n_parsed, "unparsed": len(rows) - n_parsed,
              "unparsed_answers": "replaced by seeded random answers (the authors' fallback)" if unparsed == "random" else "dropped",
              "unparsed_examples": [row["answer"] for row in rows if row["parsed"] is None][:5], "aggregation": how,
              "target": "mos_norm (else mos)", "per_source": per_source, "example": example,
              "prompt_example": content_text(built[0][0]), "seconds": round(seconds, 1), "device": device,
              **({"api_usage": vlm.usage()} if hosted else {})}
    os.makedirs(out, exist_ok=True)
    atomic_write_jsonl(os.path.join(out, f"answers_prompting_{tag}.jsonl"), rows)
    atomic_write_jsonl(os.path.join(out, f"scores_prompting_{tag}.jsonl"), per_image)
    atomic_write_json(os.path.join(out, f"eval_prompting_{tag}.json"), result)
    fmt = lambda v: "-" if v is None else f"{v:.4f}"
    text = ", ".join(f"{s} SRCC {fmt(m['srcc'])} PLCC {fmt(m['plcc'])}" + (f" (per ref {fmt(m['srcc_per_ref'])}/"
                     f"{fmt(m['plcc_per_ref'])})" if reference else "") + f" ({m['n_scored']}/{m['n_images']} scored)"
                     for s, m in per_source.items())
    print(f"{tag}: {len(rows)} queries, parsed {n_parsed}, unparsed {len(rows) - n_parsed}; {text}; "
          f"{seconds:.1f}s -> {out}/eval_prompting_{tag}.json" + (f"; API tokens {result['api_usage']['total_tokens']} "
          f"({result['api_usage']['requests_sent']} requests sent, {result['api_usage']['cache_hits']} from the cache)"
          if hosted else ""))
    return result
