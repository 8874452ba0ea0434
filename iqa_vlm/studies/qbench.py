"""Q-Bench's interpreting tests as Q-SiT reports them (Table V): LLVisionQA multiple-choice accuracy overall, per question
type and per low-level concern; and LLDescribe descriptions written out for a GPT judge.

Wu et al., "Q-Bench" (ICLR 2024): LLVisionQA is released as JSON lists (llvisionqa_dev.json, llvisionqa_test.json) of
{img_path, question, candidates (2-4 strings), correct_ans (one of them; hidden in test), type, concern}. `type` 0/1/2 =
Yes-or-No / What / How and `concern` 0..3 = Distortion / Other / In-context Distortion / In-context Other, the order of
Table V's columns and of the authors' counting scripts (lmms-eval's qbench task lists the types Yes/No, How, What:
strings in the file are accepted too, so either reading can be given explicitly).

    python prepare_data.py --task qbench --qbench_json llvisionqa_dev.json --image_root /data/qbench/images --out data/llvqa_dev
    python evaluate.py qbench --ckpt out/qsit --data data/llvqa_dev              # closed-set over the option letters
    python evaluate.py qbench --ckpt out/qsit --data data/llvqa_dev --generate true --prompt letter
    python prepare_data.py --task qbench --demo data/demo --out data/demo_mcq    # a small MCQ view of the demo set
    python evaluate.py qbench --ckpt out/demo_qsit --data data/demo_mcq --split test
    python evaluate.py describe --ckpt out/qsit --images /data/lldescribe/images # LLDescribe: descriptions for a judge

The answer is read two ways: the closed-set softmax (the op, metrics.closed_set_scores) over the option marks' first
answer tokens, argmax = the choice; and, with --generate, greedy free text parsed for a mark or an option's text.
LLDescribe is scored by a GPT judge on completeness, precision and relevance (0-2 each); there is none here, so
`describe` writes the model's descriptions ({img_path, question, response} per image) for users who have one.
"""
import os
import random
import re

import torch
from tqdm import tqdm

from iqa_vlm.common import atomic_write_json, atomic_write_jsonl, read_json
from iqa_vlm.data import LABELS, LEVELS, encode_prompts, load_image, load_records, render, to_messages, write_splits
from iqa_vlm.iqa_datasets import score_level
from iqa_vlm.metrics import closed_set_scores
from iqa_vlm.model import eval_device, eval_out, last_token_logits, load_evaluated, to_device

TYPES = ["Yes-or-No", "What", "How"]
CONCERNS = ["Distortion", "Other", "In-context Distortion", "In-context Other"]
MARKS = "ABCD"
# How the option list is rendered. qsit: Q-SiT's released evaluation (eval_scripts/qsit_transformers_test_q_bench.py:
# the question, then "A. option" lines, nothing after); qbench: the benchmark's own evaluation (Q-Bench with LLaVA);
# letter: the form of Q-Align's, Q-Instruct's and lmms-eval's scripts, which ask for the letter alone.
PROMPT_STYLES = ("qsit", "qbench", "letter")
DESCRIBE_QUESTION = "Describe the quality, aesthetics and other low-level appearance of the image in details."


def render_mcq(question, candidates, style="qbench", marks=MARKS):
    options = "".join(f"{m}. {c}\n" for m, c in zip(marks, candidates))
    if style == "qsit":
        return f"{question}\n{options}"
    if style == "qbench":
        return f"{question}\nChoose between one of the options as follows:\n{options}"
    if style == "letter":
        return f"{question}\n{options}Answer with the option's letter from the given choices directly.\n"
    raise ValueError(f"prompt style {style!r}: expected one of {PROMPT_STYLES}")


def mcq_record(rid, image, question, candidates, answer, qtype, concern, source, marks=MARKS, style="qbench", **extra):
    """One MCQ record; the gpt turn ('B. Blur'; absent when the answer is hidden) is what a validation loss scores."""
    k = candidates.index(answer) if answer is not None else None
    convs = [{"from": "human", "value": "<image>\n" + render_mcq(question, candidates, style, marks)}]
    if k is not None:
        convs.append({"from": "gpt", "value": f"{marks[k]}. {answer}"})
    return {"id": rid, "image": image, "conversations": convs, "task": "mcq", "source": source, "question": question,
            "candidates": candidates, "answer_index": k, "type": qtype, "concern": concern, "marks": marks, **extra}


def _category(value, names, field, where):
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    if isinstance(value, str) and value in names:
        return value
    raise ValueError(f"{where}: {field} is {value!r}, expected 0..{len(names) - 1} or one of {names}")


def read_llvisionqa(path, image_root=None):
    """LLVisionQA JSON (released form) -> (records, report). Entries whose image is missing are counted and left out
    (an error when all are: a wrong image_root); a malformed entry is an error naming its index and field."""
    entries = read_json(path)
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty JSON list of {{img_path, question, candidates, correct_ans, type, concern}}")
    image_root = os.path.abspath(image_root or os.path.dirname(os.path.abspath(path)))
    source = os.path.splitext(os.path.basename(path))[0]
    records, missing, hidden = [], [], 0
    for i, e in enumerate(entries, 1):
        where = f"{path} entry {i}"
        if not isinstance(e, dict):
            raise ValueError(f"{where}: expected an object, found {type(e).__name__}")
        for field in ("img_path", "question", "candidates"):
            if field not in e:
                raise ValueError(f"{where}: no {field!r} field")
        cands = e["candidates"]
        if not isinstance(cands, list) or not 2 <= len(cands) <= len(MARKS) or not all(isinstance(c, str) for c in cands):
            raise ValueError(f"{where}: candidates {cands!r}, expected a list of 2-{len(MARKS)} strings")
        answer = e.get("correct_ans")
        answer = answer[0] if isinstance(answer, list) and len(answer) == 1 else answer
        if answer in (None, "N/A"):  # the test split's answers are withheld
            answer = None
        elif answer not in cands:
            raise ValueError(f"{where}: correct_ans {answer!r} is not one of the candidates {cands}")
        image = os.path.join(image_root, e["img_path"])
        if not os.path.isfile(image):
            missing.append(e["img_path"])
            continue
        hidden += answer is None
        records.append(mcq_record(f"{source}/{i}", image, e["question"], cands, answer,
                                  _category(e.get("type"), TYPES, "type", where),
                                  _category(e.get("concern"), CONCERNS, "concern", where), source, entry=e))
    if missing and not records:
        raise ValueError(f"{path}: none of the {len(missing)} images was found below {image_root} (e.g. {missing[0]}); "
                         f"pass --image_root DIR")
    report = {"entries": len(entries), "kept": len(records), "missing_images": len(missing), "missing_examples": missing[:5],
              "hidden_answers": hidden, "image_root": image_root}
    return records, report


def make_qbench(path, out, image_root=None, split=None):
    """prepare_data.py --task qbench --qbench_json: every entry into one split (default: test when the answers are
    withheld, else val, as Q-SiT validates on LLVisionQA-dev)."""
    records, report = read_llvisionqa(path, image_root)
    if 0 < report["hidden_answers"] < len(records):
        raise ValueError(f"{path}: {report['hidden_answers']} of {len(records)} questions have no answer: expected all "
                         f"(LLVisionQA-test) or none (LLVisionQA-dev)")
    split = split or ("test" if report["hidden_answers"] else "val")
    print(f"{path}: {report['kept']} of {report['entries']} questions, {report['missing_images']} with a missing image left "
          f"out, {report['hidden_answers']} with the answer withheld -> {split}")
    splits = {s: (records if s == split else []) for s in ("train", "val", "test")}
    return write_splits(out, splits, {"task": "qbench", "source_file": os.path.abspath(path), "report": report})


def make_demo_mcq(demo, out, seed=0, val_frac=0.02):
    """A small MCQ view of the demo set in the same form: per image, a What question about its distortion (4 of the 8
    classes) and a How question about its quality level (4 of the 5). Option marks are 1-4, not A-D: the tiny model's
    words have no b, c, d (its vocabulary stays as the measured runs had it). The demo's split (by photo); val: a
    seeded val_frac of the training images' questions (LLVisionQA-dev's role in Q-SiT's mix search)."""
    rng = random.Random(f"{seed}:demo_mcq")
    meta = read_json(os.path.join(demo, "meta.json"))
    lo, hi = meta.get("score_range", {}).get("demo", [1.0, 5.0])
    splits = {"train": [], "val": [], "test": []}
    for split in ("train", "test"):
        for r in load_records([demo], split):
            image = os.path.relpath(r["image"], out)
            level = score_level(r["mos"], lo, hi) if r.get("mos") is not None else None
            to = "val" if split == "train" and rng.random() < val_frac else split
            for qtype, concern, question, truth, pool in (
                    ("What", "Distortion", "Which distortion is in this image?", r["label"], LABELS),
                    ("How", "Other", "How is the quality of this image?", level, LEVELS)):
                if truth is None:
                    continue
                cands = [truth] + rng.sample([c for c in pool if c != truth], 3)
                rng.shuffle(cands)
                splits[to].append(mcq_record(f"{r['id']}/{qtype.lower()}", image, question, cands, truth, qtype, concern,
                                             "demo_mcq", marks="1234", style="qbench", ref=r.get("ref")))
    return write_splits(out, splits, {"task": "qbench", "view_of": os.path.abspath(demo), "seed": seed, "val_frac": val_frac,
                                      "questions": "What (distortion class) and How (quality level), 4 options, marks 1-4"})


# ----------------------------------------------------------------------------- evaluation
def mark_token_ids(processor, marks):
    """The first answer token of each option mark, as the chat template puts the answer after the prompt (an
    answer 'B. Blur' starts with the token of 'B' there, with whatever space the template leaves)."""
    tok = processor.tokenizer
    msgs = to_messages([{"from": "human", "value": "?"}], False)
    prompt = tok(render(processor, msgs, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    ids = []
    for m in marks:
        full = tok(render(processor, msgs + [{"role": "assistant", "content": [{"type": "text", "text": f"{m}. x"}]}]),
                   add_special_tokens=False)["input_ids"]
        if full[:len(prompt)] != prompt:
            raise ValueError(f"the answer {m!r} does not start on a token boundary after the prompt: {full[len(prompt) - 3:]}")
        ids.append(full[len(prompt)])
    if len(set(ids)) != len(ids) or (tok.unk_token_id is not None and tok.unk_token_id in ids):
        raise ValueError(f"option marks {marks!r} do not map to distinct known tokens: {tok.convert_ids_to_tokens(ids)}")
    return ids


def released_correct(text, candidates, answer_index, marks):
    """Q-SiT's released LLVisionQA scoring of a generated answer (qsit_transformers_test_q_bench.py): its answer string
    is the decoded sequence after the last "assistant", so it starts with the newline the template leaves; correct if
    it equals the mark or the option text, holds "<mark>.", or has the mark as a whole line. The equalities never
    hold there because of that newline, so an answer giving only the option text counts as wrong, as in their runs."""
    said = ("\n" + text).split("assistant")[-1]
    mark, answer = marks[answer_index], candidates[answer_index]
    return said == mark or mark + "." in said or said == answer or mark in said.split("\n")


def parse_choice(text, candidates, marks):
    """Index of the option a free answer names: a leading mark ('B', 'B.', '(B)'), else the one candidate text it
    contains; None if neither (stricter than a 'mark anywhere in the answer' rule, which credits 'A or B')."""
    t = text.strip()
    m = re.match(r"^\(?([" + re.escape(marks) + r"])(?:[.):\s]|$)", t)
    if m:
        return marks.index(m.group(1))
    hits = [i for i, c in enumerate(candidates) if re.search(r"\b" + re.escape(c.lower()) + r"\b", t.lower())]
    return hits[0] if len(hits) == 1 else None


@torch.no_grad()
def eval_mcq(model, processor, records, style="qsit", batch_size=16, device="cpu", generate=True, max_new_tokens=200,
             closed_set=True):
    """One prediction per record: the generated answer judged by Q-SiT's released rule (released_correct) and by
    parse_choice (generate), and the closed set: probs over its options' marks and the argmax choice (closed_set)."""
    preds, by_marks = [], {}
    bar = tqdm(total=len(records), desc="eval qbench", unit="question")
    for r in records:  # one closed set per family of marks (A-D for the benchmark, 1-4 for the demo view)
        by_marks.setdefault(r["marks"], []).append(r)
    for marks, group in by_marks.items():
        ids = mark_token_ids(processor, marks) if closed_set else None
        for start in range(0, len(group), batch_size):
            recs = [{**r, "conversations": [{"from": "human", "value": "<image>\n" + render_mcq(
                r["question"], r["candidates"], style, marks)}]} for r in group[start:start + batch_size]]
            probs = [None] * len(recs)
            if closed_set:
                enc, last = encode_prompts(processor, recs)
                logits = last_token_logits(model, to_device(enc, model, device), last)
                probs = closed_set_scores(logits, ids)[0].tolist()
            texts = [None] * len(recs)
            if generate:
                enc, _ = encode_prompts(processor, recs, padding_side="left")
                enc = to_device(enc, model, device)
                new = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)[:, enc["input_ids"].shape[1]:]
                texts = processor.tokenizer.batch_decode(new, skip_special_tokens=True)
            for r, p, text in zip(recs, probs, texts):
                k = len(r["candidates"])
                pred = {"id": r["id"], "type": r["type"], "concern": r["concern"], "answer_index": r["answer_index"]}
                if p is not None:
                    p = [x / sum(p[:k]) for x in p[:k]]  # the softmax over this question's options only
                    choice = max(range(k), key=p.__getitem__)
                    pred.update(probs=[round(x, 5) for x in p], choice=choice,
                                correct=None if r["answer_index"] is None else choice == r["answer_index"])
                if generate:
                    parsed = parse_choice(text, r["candidates"], marks[:k])
                    known = r["answer_index"] is not None
                    pred.update(response=text.strip(), parsed=parsed,
                                generation_correct=parsed == r["answer_index"] if known else None,
                                released_correct=released_correct(text, r["candidates"], r["answer_index"], marks)
                                if known else None)
                preds.append(pred)
            bar.update(len(recs))
    bar.close()
    order = {r["id"]: i for i, r in enumerate(records)}
    return sorted(preds, key=lambda p: order[p["id"]])


def accuracy_table(preds, key="correct"):
    """Accuracy overall, per question type and per concern (Table V's columns), over questions with a known answer."""
    known = [p for p in preds if p.get(key) is not None]

    def acc(ps):
        return {"accuracy": sum(p[key] for p in ps) / len(ps), "n": len(ps)} if ps else {"accuracy": None, "n": 0}
    return {"overall": acc(known), "per_type": {t: acc([p for p in known if p["type"] == t]) for t in TYPES},
            "per_concern": {c: acc([p for p in known if p["concern"] == c]) for c in CONCERNS}}


def table_text(table):
    cols = TYPES + CONCERNS + ["Overall"]
    cells = [table["per_type"][t] for t in TYPES] + [table["per_concern"][c] for c in CONCERNS] + [table["overall"]]
    return ("".join(c.rjust(24) for c in cols) + "\n" +
            "".join((f"{c['accuracy']:.2%} ({c['n']})" if c["accuracy"] is not None else "-").rjust(24) for c in cells))


def evaluate(ckpt=None, model=None, data="data/demo_mcq", split="val", out=None, prompt="qsit", batch_size=16, limit=0,
             generate=True, max_new_tokens=200, closed_set=False, allow_unfinished=False):
    """evaluate.py qbench: LLVisionQA accuracy of a checkpoint (or an untuned model) -> OUT/eval_qbench.json (Table V's
    columns), OUT/predictions_qbench.jsonl, and OUT/llvisionqa_answers.json (the released entries with each answer as
    'response': what the benchmark's authors take for the hidden test split). By default Q-SiT's released protocol:
    its prompt, a greedy answer of up to 200 tokens, judged by its rule (released_correct); closed_set: also the argmax
    over the option marks' next-token probabilities (our option, and what generate=False reports alone)."""
    if prompt not in PROMPT_STYLES:
        raise SystemExit(f"--prompt must be one of {PROMPT_STYLES}, got {prompt!r}")
    closed_set = closed_set or not generate
    device, dtype = eval_device()
    vlm, processor, cfg, name = load_evaluated(ckpt, model, device, dtype, allow_unfinished)
    records = [r for r in load_records(data, split) if r.get("task") == "mcq"]
    records = records[:limit] if limit else records
    if not records:
        raise SystemExit(f"no multiple-choice records in {data} ({split}); make them with prepare_data.py --task qbench")
    for marks in sorted({r["marks"] for r in records}) if closed_set else []:  # before any work: can this tokenizer
        try:                                                                     # score the options apart?
            mark_token_ids(processor, marks)
        except ValueError as e:
            raise SystemExit(f"evaluate.py qbench: {name} cannot score the options of {data} ({split}): {e}") from None
    preds = eval_mcq(vlm, processor, records, prompt, batch_size, device, generate, max_new_tokens, closed_set)
    result = {"task": "qbench", "model": name, "data": data, "split": split, "prompt": prompt, "n": len(preds),
              "max_new_tokens": max_new_tokens if generate else None, "unfinished_checkpoint": cfg.get("finished") is False}
    if generate:
        result["released_rule"] = accuracy_table(preds, "released_correct")
        result["generation"] = accuracy_table(preds, "generation_correct")
        result["generation_unparsed"] = sum(p["parsed"] is None for p in preds)
    if closed_set:
        result["closed_set"] = accuracy_table(preds)
    run_out = eval_out(out, ckpt, model)
    atomic_write_json(os.path.join(run_out, "eval_qbench.json"), result)
    atomic_write_jsonl(os.path.join(run_out, "predictions_qbench.jsonl"), preds)
    answers = [{**r["entry"], "response": p["response"] if "response" in p else r["marks"][p["choice"]]}
               for r, p in zip(records, preds) if "entry" in r]
    if answers:
        atomic_write_json(os.path.join(run_out, "llvisionqa_answers.json"), answers)
    if generate:
        print(f"generated answers, Q-SiT's released rule, {split}:\n{table_text(result['released_rule'])}")
        print(f"the same answers parsed for one option ({result['generation_unparsed']} unparsed):\n"
              f"{table_text(result['generation'])}")
    if closed_set:
        print(f"closed-set choice over the option marks, {split}:\n{table_text(result['closed_set'])}")
    print(f"-> {run_out}/eval_qbench.json, predictions_qbench.jsonl")
    return result


@torch.no_grad()
def describe(ckpt=None, model=None, images=None, out=None, max_new_tokens=256, limit=0, allow_unfinished=False):
    """evaluate.py describe: greedy LLDescribe descriptions of every image in `images` (a folder) ->
    OUT/lldescribe_descriptions.json [{img_path, question, response}] (no official output schema is published: ours)."""
    if not images or not os.path.isdir(images):
        raise SystemExit(f"--images {images}: expected a folder of images (LLDescribe's images.tar unpacked)")
    names = sorted(f for f in os.listdir(images) if os.path.splitext(f)[1].lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    names = names[:limit] if limit else names
    device, dtype = eval_device()
    vlm, processor, _, _ = load_evaluated(ckpt, model, device, dtype, allow_unfinished)
    rows = []
    for i, name in enumerate(tqdm(names, desc="describe", unit="image"), 1):
        rec = {"image": os.path.join(images, name), "conversations": [{"from": "human", "value": "<image>\n" + DESCRIBE_QUESTION}]}
        load_image(rec["image"])  # a broken image is an error naming it, before the model runs
        enc, _ = encode_prompts(processor, [rec], padding_side="left")
        enc = to_device(enc, vlm, device)
        new = vlm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)[:, enc["input_ids"].shape[1]:]
        rows.append({"img_path": name, "question": DESCRIBE_QUESTION,
                     "response": processor.tokenizer.decode(new[0], skip_special_tokens=True).strip()})
    path = os.path.join(eval_out(out, ckpt, model), "lldescribe_descriptions.json")
    atomic_write_json(path, rows)
    print(f"{len(rows)} descriptions -> {path} (score them with a GPT judge: completeness, precision, relevance, 0-2 each)")
    return rows

