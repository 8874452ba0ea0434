"""Evaluate a fine-tuned (or untuned) VLM on prepared test data.

    python evaluate.py --ckpt out/run                      # data and model from the run's config.json
    python evaluate.py --ckpt out/run --data data/distortion --split test
    python evaluate.py --model tiny                        # untuned baseline: options list appended (paper protocol)
    python evaluate.py --model llava-hf/llava-1.5-7b-hf --data data/distortion --out out/llava_untuned

Distortion task: closed-set argmax over the class tokens at the answer position (teacher-forced
prefix "The image has some"), plus free generation parsed for the class word. Writes
OUT/eval_distortion.json (accuracy, per_class, confusion, labels, n, ...) and OUT/confusion.png,
OUT being --out, else the checkpoint folder.

    python evaluate.py --task score --ckpt out/score --data data/demo_score          # SRCC/PLCC per source
    python evaluate.py --task score --ckpt out/A --ckpt out/B --data data/score --logistic --out out/table

Score task: closed-set softmax over the five level tokens after "The quality of the image is" -> score =
probs @ [1..5] (score01 on [0, 1]); SRCC and PLCC (--logistic: after the 4-parameter logistic fit) per source
against mos_norm; writes OUT/eval_score.json, OUT/predictions_score.jsonl (per image) and the cross-dataset
table (rows: trained on, columns: tested on) to OUT/score_table.json, also printed.

    python evaluate.py --protocol double --prompting cot --model tiny --data data/demo --limit 32   # prompting study
    python evaluate.py --protocol multiple --prompting icl --reference --model llava-hf/llava-onevision-qwen2-7b-ov-hf --data data/score

Prompting study (prompting.py): single / double / multiple stimulus x standard / cot / icl, NR or FR (--reference);
free generation, answers parsed, pairwise answers aggregated by Bradley-Terry; SRCC per source. Writes
OUT/eval_prompting_{protocol}_{prompting}[_fr].json, answers_prompting_*.jsonl and scores_prompting_*.jsonl.

    python evaluate.py --two_stage --ckpt out/pw_stage2 --data data/demo_pathway      # two-stage reasoning
    python evaluate.py --one_stage --ckpt out/pw_one_stage --data data/demo_pathway   # the one-stage baseline
    python evaluate.py --two_stage --instability 3,5 --temperature 1.0 --ckpt out/pw_stage2 --data data/demo_pathway

Two-stage reasoning (pathway.py): --two_stage describes the image (greedy), then asks the stage-2 question about the
description with no image and reads the closed-set level softmax -> score; --one_stage lets the model write its whole
feedback and reads the level where it writes it. SRCC/PLCC per source and latency per image. Writes
OUT/eval_{one,two}_stage.json, predictions_*.jsonl. --instability S,R: S sessions, each sample answered R times by
sampling; the share of samples whose answers disagree or fall outside the level set, mean +- std over sessions; writes
OUT/instability_{mode}.json and _answers.jsonl.
"""
import argparse
import os
import re
import sys
import time

import torch

from common import atomic_write_json, atomic_write_png
from data import DISTORTION_PREFIX, LABELS, OPTIONS_SUFFIX, closed_set_token_ids, encode_prompts, load_records
from kernels import level_cross_entropy
from model import load_checkpoint, load_model

# words a free-form answer may use for each class (first match in the answer wins)
SYNONYMS = {"blur": ["blur", "blurry", "blurred", "blurriness", "out of focus"],
            "noise": ["noise", "noisy", "grain", "grainy"],
            "brightness": ["brightness", "bright", "dark", "overexposed", "underexposed", "exposure"],
            "compression": ["compression", "compressed", "jpeg", "blocky", "blocking"],
            "contrast": ["contrast"],
            "colorfulness": ["colorfulness", "colourfulness", "saturation", "saturated", "color", "colour"],
            "jitter": ["jitter", "jittered", "jittery"],
            "clean": ["clean", "no distortion", "none", "pristine"]}


def parse_label(text):
    """First class word in a free answer, or None. 'Has some blur' -> 'blur'."""
    text = text.lower()
    best = None
    for label, words in SYNONYMS.items():
        for w in words:
            m = re.search(r"\b" + re.escape(w) + r"\b", text)
            if m and (best is None or m.start() < best[0]):
                best = (m.start(), label)
    return best[1] if best else None


def last_token_logits(model, enc, last):
    """Next-token logits at each row's `last` position (LM head on those rows only)."""
    hidden = model.model(**enc).last_hidden_state
    return model.lm_head(hidden[torch.arange(hidden.shape[0]), last.to(hidden.device)])


def confusion_png(path, confusion, labels, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    cm = np.array(confusion, dtype=float)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8, color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    atomic_write_png(path, fig)


@torch.no_grad()
def eval_distortion(model, processor, records, batch_size=32, options=False, generate=True, max_new_tokens=12, device="cpu"):
    label_ids = closed_set_token_ids(processor, LABELS, DISTORTION_PREFIX)
    level_ids = torch.tensor(label_ids, device=device)
    suffix = OPTIONS_SUFFIX if options else None
    n = len(records)
    confusion = [[0] * len(LABELS) for _ in LABELS]
    gen_correct, unparsed, examples, gen_confusion = 0, 0, [], [[0] * (len(LABELS) + 1) for _ in LABELS]
    nll_sum, t0 = 0.0, time.time()
    for start in range(0, n, batch_size):
        recs = records[start:start + batch_size]
        truth = [LABELS.index(r["label"]) for r in recs]
        enc, last = encode_prompts(processor, recs, answer_prefix=DISTORTION_PREFIX, suffix=suffix)
        logits = last_token_logits(model, {k: v.to(device) for k, v in enc.items()}, last)
        target = level_ids[torch.tensor(truth, device=device)]
        loss, probs = level_cross_entropy(logits.float(), target, level_ids)
        nll_sum += float(loss.sum())
        for t, p in zip(truth, probs.argmax(1).tolist()):
            confusion[t][p] += 1
        if generate:
            enc, _ = encode_prompts(processor, recs, suffix=suffix, padding_side="left")
            enc = {k: v.to(device) for k, v in enc.items()}
            new = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)[:, enc["input_ids"].shape[1]:]
            for t, r, text in zip(truth, recs, processor.tokenizer.batch_decode(new, skip_special_tokens=True)):
                pred = parse_label(text)
                gen_correct += pred == LABELS[t]
                unparsed += pred is None
                gen_confusion[t][LABELS.index(pred) if pred else len(LABELS)] += 1
                if len(examples) < 10:
                    examples.append({"id": r.get("id"), "label": LABELS[t], "answer": text.strip(), "parsed": pred})
        done = min(start + batch_size, n)
        print(f"\reval: {done}/{n} ({done / (time.time() - t0):.0f} samples/s)", end="", file=sys.stderr)
    print(file=sys.stderr)
    correct = sum(confusion[i][i] for i in range(len(LABELS)))
    per_class = {l: (confusion[i][i] / sum(confusion[i]) if sum(confusion[i]) else None) for i, l in enumerate(LABELS)}
    result = {"task": "distortion", "n": n, "labels": LABELS, "accuracy": correct / max(n, 1), "per_class": per_class,
              "confusion": confusion, "confusion_axes": "rows = true label, columns = predicted (closed-set argmax)",
              "closed_set_nll": nll_sum / max(n, 1), "label_token_ids": label_ids, "options_appended": options}
    if generate:
        result.update({"generation_accuracy": gen_correct / max(n, 1), "generation_unparsed": unparsed,
                       "generation_confusion": gen_confusion, "generation_examples": examples})
    return result


@torch.no_grad()
def eval_score(model, processor, records, batch_size=32, device="cpu", system=None):
    """Scoring: closed-set softmax over the 5 level tokens after the teacher-forced "The quality of the image is"
    (through the op, scoring.closed_set_scores) -> score = probs @ [1..5]; one prediction dict per record."""
    from data import LEVELS
    from scoring import SCORE_PREFIX, closed_set_scores, with_system
    level_ids = closed_set_token_ids(processor, LEVELS, SCORE_PREFIX)
    preds, t0 = [], time.time()
    for start in range(0, len(records), batch_size):
        recs = records[start:start + batch_size]
        enc, last = encode_prompts(processor, [with_system(r, system) if system else r for r in recs], answer_prefix=SCORE_PREFIX)
        logits = last_token_logits(model, {k: v.to(device) for k, v in enc.items()}, last)
        target = [LEVELS.index(r["level"]) if r.get("level") in LEVELS else -1 for r in recs]
        probs, score, nll = closed_set_scores(logits, level_ids, target)
        for r, p, s, l in zip(recs, probs.tolist(), score.tolist(), nll.tolist()):
            preds.append({"id": r.get("id"), "source": r.get("source"), "mos": r.get("mos"), "mos_norm": r.get("mos_norm"),
                          "level": r.get("level"), "probs": [round(x, 5) for x in p], "score": round(s, 5),
                          "score01": round((s - 1) / 4, 5), "nll": round(l, 5) if r.get("level") in LEVELS else None})
        done = min(start + batch_size, len(records))
        print(f"\reval score: {done}/{len(records)} ({done / (time.time() - t0):.0f} samples/s)", end="", file=sys.stderr)
    print(file=sys.stderr)
    return preds


def main_score(args, ap):
    """--task score: one row per --ckpt/--model (trained on), one column per test source; JSON + printed table."""
    from common import atomic_write_jsonl
    from scoring import SYSTEM_PREFIX, score_metrics, uses_system_prefix
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    runs = [("ckpt", c) for c in args.ckpt or []] + ([("model", args.model)] if args.model else [])
    if not runs:
        ap.error("give --ckpt DIR (one or more) or --model NAME")
    table, columns = {}, []
    for kind, name in runs:
        if kind == "ckpt":
            model, processor, cfg = load_checkpoint(name, dtype=dtype, device=device)
            data_dirs, row, trained_on = args.data or cfg["data"], os.path.basename(os.path.normpath(name)), cfg["data"]
            out = os.path.join(args.out, row) if args.out and len(runs) > 1 else (args.out or name)
            system = SYSTEM_PREFIX if args.system == "yes" or (args.system == "auto" and uses_system_prefix(cfg.get("mix"))) else None
        else:
            model, processor = load_model(name, dtype=dtype, device=device)
            data_dirs, row, trained_on = args.data or "data/demo_score", f"untuned {name}", None
            out = args.out or os.path.join("out", "untuned_" + os.path.basename(name.rstrip("/")))
            out = os.path.join(out, "untuned") if args.out and len(runs) > 1 else out
            system = SYSTEM_PREFIX if args.system == "yes" else None
        model.eval()
        records = [r for r in load_records(data_dirs, args.split) if r.get("task") == "score"]
        records = records[:args.limit] if args.limit else records
        if not records:
            raise SystemExit(f"no score records in {data_dirs} ({args.split}); make them with prepare_data.py --task score")
        preds = eval_score(model, processor, records, args.batch_size, device, system)
        for p in preds:  # correlations against mos_norm: higher = better for every source (DMOS flipped)
            p["target"] = p["mos_norm"] if p["mos_norm"] is not None else p["mos"]
        metrics = score_metrics([{**p, "mos": p["target"]} for p in preds], logistic=args.logistic)
        result = {"task": "score", "model": name, "trained_on": trained_on, "data": data_dirs, "split": args.split,
                  "system_prefix": system, "logistic": args.logistic, "per_source": metrics}
        os.makedirs(out, exist_ok=True)
        atomic_write_json(os.path.join(out, "eval_score.json"), result)
        atomic_write_jsonl(os.path.join(out, "predictions_score.jsonl"), preds)
        table[row] = {"trained_on": trained_on, "results": metrics}
        columns += [s for s in metrics if s not in columns]
        print(f"{row}: " + ", ".join(f"{s} SRCC {m['srcc'] if m['srcc'] is None else round(m['srcc'], 4)} "
                                     f"PLCC {m['plcc'] if m['plcc'] is None else round(m['plcc'], 4)}" for s, m in metrics.items())
              + f"  -> {out}/eval_score.json, predictions_score.jsonl")
    key = "plcc_logistic" if args.logistic else "plcc"
    def cell(m):
        return "/".join("  -  " if m.get(k) is None else f"{m[k]:.3f}" for k in ("srcc", key))
    lines = ["trained on \\ tested on".ljust(28) + "".join(c.rjust(14) for c in columns)]
    for row, entry in table.items():
        lines.append(row[:28].ljust(28) + "".join(cell(entry["results"].get(c, {})).rjust(14) for c in columns))
    print(f"SRCC/{'PLCC (logistic)' if args.logistic else 'PLCC'}, split {args.split}:\n" + "\n".join(lines))
    table_path = args.table or os.path.join(args.out or (args.ckpt[0] if args.ckpt and len(runs) == 1 else "out"), "score_table.json")
    atomic_write_json(table_path, {"rows": list(table), "columns": columns, "metric": ["srcc", key], "split": args.split, "table": table})
    print(f"table -> {table_path}")
    return table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=None, action="append", help="a train.py output folder (repeat for the score table)")
    ap.add_argument("--model", default=None, help="untuned model to evaluate (without --ckpt): tiny, HF id or path")
    ap.add_argument("--data", default=None, help="prepared folder(s); default: the checkpoint's training data, else data/demo")
    ap.add_argument("--split", default="test")
    ap.add_argument("--task", default="distortion", choices=["distortion", "score"])
    ap.add_argument("--out", default=None, help="where to write results (default: the checkpoint folder)")
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--limit", type=int, default=0, help="evaluate only the first N records (0 = all)")
    ap.add_argument("--no_generate", action="store_true", help="skip free generation (closed-set only)")
    ap.add_argument("--options", default="auto", choices=["auto", "yes", "no"],
                    help="append the options list to the question (auto: only for untuned models)")
    ap.add_argument("--logistic", action="store_true", help="score: PLCC after the 4-parameter logistic fit")
    ap.add_argument("--system", default="auto", choices=["auto", "yes", "no"],
                    help="score: system turn 'Assume you are an image quality evaluator.' (auto: if the run used a --mix)")
    ap.add_argument("--table", default=None, help="score: where the cross-dataset table JSON goes (default OUT/score_table.json)")
    ap.add_argument("--protocol", default=None, choices=["single", "double", "multiple"],
                    help="prompting study (prompting.py): single / double / multiple stimulus")
    ap.add_argument("--prompting", default="standard", choices=["standard", "cot", "icl"],
                    help="protocol: standard, chain-of-thought (describe first) or in-context (one worked example)")
    ap.add_argument("--reference", action="store_true", help="protocol: full-reference (records need ref_image)")
    ap.add_argument("--max_new_tokens", type=int, default=0,
                    help="protocol / pathway: generation length (0: protocol 24, cot 256; pathway 64)")
    ap.add_argument("--seed", type=int, default=0,
                    help="protocol: draws of --limit, pairs/quadruples, the icl example; pathway: --limit's draw, "
                         "session s of --instability samples with seed + s")
    ap.add_argument("--two_stage", action="store_true",
                    help="pathway (pathway.py): describe the image, then rate the description text only; SRCC/PLCC, latency")
    ap.add_argument("--one_stage", action="store_true",
                    help="pathway: the whole feedback with the image, the level read where the model writes it")
    ap.add_argument("--instability", default=None, metavar="S,R",
                    help="pathway: S sessions, each answering every sample R times by sampling; instability ratio")
    ap.add_argument("--temperature", type=float, default=1.0, help="--instability: sampling temperature")
    ap.add_argument("--fixed_description", action="store_true",
                    help="--instability: describe once (greedy) and sample only what follows the description "
                         "(two_stage: the stage-2 answer; one_stage: the conclusion)")
    ap.add_argument("--describer", default=None, help="--two_stage: a checkpoint that writes the stage-1 descriptions "
                                                      "(default: the --ckpt model itself)")
    ap.add_argument("--latency_n", type=int, default=16, help="pathway: images timed one at a time (batch 1)")
    ap.add_argument("--rounds", type=int, default=0, help="protocol: queries per image (0: double 4, multiple 2)")
    ap.add_argument("--icl_split", default="train", help="protocol: split the icl worked example comes from")
    ap.add_argument("--bt_prior", type=float, default=1.0, help="protocol: Bradley-Terry prior (virtual tied games)")
    args = ap.parse_args(argv)
    if args.one_stage or args.two_stage or args.instability:
        from pathway import main_pathway
        return main_pathway(args, ap)
    if args.protocol:
        from prompting import main_prompting
        return main_prompting(args, ap)
    if args.task == "score":
        return main_score(args, ap)
    if args.ckpt and len(args.ckpt) > 1:
        ap.error("several --ckpt are for --task score (the cross-dataset table)")
    args.ckpt = args.ckpt[0] if args.ckpt else None
    if not args.ckpt and not args.model:
        ap.error("give --ckpt DIR (fine-tuned) or --model NAME (untuned)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.ckpt:
        model, processor, cfg = load_checkpoint(args.ckpt, dtype=dtype, device=device)
        data_dirs, out, name = args.data or cfg["data"], args.out or args.ckpt, f"{cfg['model']} [{cfg['trainable']}]"
    else:
        model, processor = load_model(args.model, dtype=dtype, device=device)
        data_dirs, out, name = args.data or "data/demo", args.out or os.path.join("out", "untuned_" + os.path.basename(args.model.rstrip("/"))), f"{args.model} untuned"
    model.eval()
    records = [r for r in load_records(data_dirs, args.split) if r.get("task", "distortion") == "distortion"]
    if args.limit:
        records = records[:args.limit]
    if not records:
        raise SystemExit(f"no distortion records in {data_dirs} ({args.split})")
    options = args.options == "yes" or (args.options == "auto" and not args.ckpt)
    result = eval_distortion(model, processor, records, args.batch_size, options, not args.no_generate, device=device)
    result.update({"model": name, "data": data_dirs, "split": args.split})
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, "eval_distortion.json"), result)
    confusion_png(os.path.join(out, "confusion.png"), result["confusion"], LABELS,
                  f"{name}: accuracy {100 * result['accuracy']:.1f}% (n={result['n']})")
    print("per class: " + ", ".join(f"{l} {100 * a:.0f}%" for l, a in result["per_class"].items() if a is not None))
    if "generation_accuracy" in result:
        print(f"free generation: accuracy {100 * result['generation_accuracy']:.1f}%, unparsed {result['generation_unparsed']}/{result['n']}")
    print(f"test accuracy (closed-set, {result['n']} samples): {100 * result['accuracy']:.1f}%  -> {out}/eval_distortion.json")
    return result


if __name__ == "__main__":
    main()
