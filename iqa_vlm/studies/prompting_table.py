"""The prompting study's tables for one model: all nine systems (3 protocols x 3 promptings), NR and FR, in the shape of
Wu et al.'s Table 1 with its published rows beside, and Table 2's expert FR baselines (PSNR, SSIM, MS-SSIM) measured on
the same images.

    python evaluate.py prompting-table --model llava-hf/llava-v1.6-mistral-7b-hf --data data/nr --fr_data data/fr
    python evaluate.py prompting-table --model tiny --data data/demo --limit 32        # the demo (NR only)

Each system runs as `evaluate.py prompting` would (prompting.evaluate; its files go to OUT/<nr|fr>/), on one load of
the model. --limit draws that many images per run (the authors sample 150 per dataset); FR draws whole references.
Writes OUT/prompting_table.json and prints the tables. The paper's columns are its datasets (FR-KADID, Aug-KADID, TQD,
SPCD, NR-KADID, SPAQ, AGIQA-3K); ours are the sources of the given folders, so they sit side by side, not aligned.
"""
import os

import numpy as np
from tqdm import tqdm

from iqa_vlm.api_model import is_api
from iqa_vlm.studies import prompting as P
from iqa_vlm.common import atomic_write_json
from iqa_vlm.expert_iqa import EXPERTS, fr_scores
from iqa_vlm.model import eval_device, load_evaluated
from iqa_vlm.studies.prompting_paper import TABLE1, TABLE1_COLUMNS, TABLE1_MODELS, TABLE2, TABLE2_COLUMNS, TABLE3, TABLE3_COLUMNS

SHORT = {"standard": "S", "icl": "I", "cot": "C"}


def expert_correlations(records):
    """Table 2's expert rows on FR records: {expert: correlations per source (global and per reference)}."""
    scores = []
    for i, r in enumerate(tqdm(records, desc="experts", unit="image"), 1):
        scores.append(fr_scores(r["image"], r["ref_image"]))
    out = {}
    for name in EXPERTS:
        per_image = [{"id": r["id"], "source": r.get("source"), "ref_image": r["ref_image"], "target": P.target(r), "score": s[name]}
                     for r, s in zip(records, scores)]
        out[name] = P.correlations(per_image, reference=True)
    return out


def fmt(v):
    return "  -  " if v is None or v != v else f"{v:.3f}"


def table(ckpt=None, model=None, data=None, fr_data=None, split="test", out=None, limit=150, seed=0, batch_size=8,
          prompts="paper", aggregation="thurstone", unparsed="random", max_new_tokens=0, allow_unfinished=False, **api):
    """evaluate.py prompting-table: the nine systems on `data` (NR) and on `fr_data` (FR), one model load (or one
    hosted model, --model api:MODEL with the api_* options of prompting.open_api)."""
    if not data and not fr_data:
        raise SystemExit("give --data (NR folders) and/or --fr_data (FR folders: records with ref_image)")
    out = out or (os.path.join("out", "prompting_table_" + os.path.basename(ckpt.rstrip("/"))) if ckpt else
                  P.default_out(model, "prompting_table"))
    device, dtype = eval_device()
    if is_api(model):
        (vlm, processor), name = (P.open_api(model, out, **api), None), model
    else:
        vlm, processor, _, name = load_evaluated(ckpt, model, device, dtype, allow_unfinished)
    results, columns = {}, []
    for reference, dirs in ((True, fr_data), (False, data)):
        if not dirs:
            continue
        for protocol in P.N_IMAGES:
            for prompting in P.PROMPTINGS:
                res = P.evaluate(protocol, prompting, reference, ckpt, model, dirs, split, os.path.join(out, "fr" if reference else "nr"),
                                 batch_size, limit, seed, max_new_tokens, 0, "train", prompts, aggregation, unparsed,
                                 allow_unfinished=allow_unfinished, loaded=(vlm, processor))
                key = f"{'FR' if reference else 'NR'} {protocol} {SHORT[prompting]}"
                results[key] = {"parsed": res["parsed"], "queries": res["n_queries"], "per_source": res["per_source"]}
                columns += [f"{'FR' if reference else 'NR'}:{s}" for s in res["per_source"] if f"{'FR' if reference else 'NR'}:{s}" not in columns]
    experts = {}
    if fr_data:
        records = P.draw_limit(P.load_prompting_records(fr_data, split, True), limit, seed, True)
        experts = expert_correlations(records)
    report = {"model": name, "data": data, "fr_data": fr_data, "split": split, "limit": limit, "prompts": prompts,
              "aggregation": aggregation, "unparsed": unparsed, "systems": results, "experts": experts,
              "paper_table1": TABLE1, "paper_table2": TABLE2, "paper_table3": TABLE3}
    atomic_write_json(os.path.join(out, "prompting_table.json"), report)
    print(table1_text(name, results, columns))
    if experts:
        print(table2_text(experts, results))
    print(table3_text(results))
    print(f"NR experts (Table 3: NIQE, MUSIQ, MANIQA, LIQE) need downloaded parameters or weights: not run. "
          f"-> {out}/prompting_table.json")
    return report


def table1_text(name, results, columns):
    """Table 1's shape: per protocol, this model's S / I / C rows (SRCC per source; answers parsed / queries), then
    the paper's rows for its four models over its seven datasets."""
    lines = [f"SRCC ({name}); parsed = answers read / queries (the rest replaced or dropped, --unparsed)"]
    for protocol in P.N_IMAGES:
        lines.append(f"{protocol}-stimulus".ljust(30) + "".join(c[-14:].rjust(15) for c in columns) + "   parsed")
        for prompting in P.PROMPTINGS:
            cells, parsed = [], []
            for c in columns:
                kind, src = c.split(":", 1)
                r = results.get(f"{kind} {protocol} {SHORT[prompting]}")
                cells.append(fmt(r["per_source"].get(src, {}).get("srcc")) if r else "  -  ")
                if r and f"{r['parsed']}/{r['queries']}" not in parsed:
                    parsed.append(f"{r['parsed']}/{r['queries']}")
            lines.append(f"  this model-{SHORT[prompting]}".ljust(30) + "".join(v.rjust(15) for v in cells) + "   " + ", ".join(parsed))
        lines.append("  paper".ljust(30) + "".join(c.rjust(11) for c in TABLE1_COLUMNS))
        for model in TABLE1_MODELS:
            for prompting in ("standard", "icl", "cot"):
                lines.append(f"  {model}-{SHORT[prompting]}".ljust(30) + "".join(f"{v:.3f}".rjust(11) for v in TABLE1[protocol][model][prompting]))
    return "\n".join(lines)


def table2_text(experts, results):
    """Table 2's shape: SRCC / PLCC per FR source for the experts (global; per reference in brackets) and this model's
    best FR system, then the paper's rows."""
    srcs = sorted({s for e in experts.values() for s in e if s != "all"}, key=str)
    lines = ["FR experts and MLLM, SRCC/PLCC (per-reference means in brackets)".ljust(30) + "".join(s[-24:].rjust(26) for s in srcs)]
    for name, per in experts.items():
        lines.append(f"  {name}".ljust(30) + "".join(
            f"{fmt(per[s]['srcc'])}/{fmt(per[s]['plcc'])} ({fmt(per[s]['srcc_per_ref'])})".rjust(26) for s in srcs))
    fr = {k: v for k, v in results.items() if k.startswith("FR")}
    if fr:
        best = max(fr, key=lambda k: np.nanmean([v["srcc"] if v["srcc"] is not None else np.nan
                                                 for s, v in fr[k]["per_source"].items() if s != "all"] or [np.nan]))
        lines.append(f"  this model ({best[3:]})".ljust(30) + "".join(
            f"{fmt(fr[best]['per_source'].get(s, {}).get('srcc'))}/{fmt(fr[best]['per_source'].get(s, {}).get('plcc'))}".rjust(26)
            for s in srcs))
    lines.append("  paper".ljust(30) + "".join(c.rjust(14) for c in TABLE2_COLUMNS))
    for name, vals in TABLE2.items():
        lines.append(f"  {name}".ljust(30) + "".join(f"{vals[2 * i]:.3f}/{vals[2 * i + 1]:.3f}".rjust(14) for i in range(4)))
    return "\n".join(lines)


def table3_text(results):
    """Table 3's shape (NR): this model's best NR system, SRCC/PLCC per source, then the paper's rows."""
    nr = {k: v for k, v in results.items() if k.startswith("NR")}
    lines = []
    if nr:
        best = max(nr, key=lambda k: np.nanmean([v["srcc"] if v["srcc"] is not None else np.nan
                                                 for s, v in nr[k]["per_source"].items() if s != "all"] or [np.nan]))
        lines.append(f"NR, this model's best system ({best[3:]}): " + ", ".join(
            f"{s} {fmt(v['srcc'])}/{fmt(v['plcc'])}" for s, v in nr[best]["per_source"].items()))
    lines.append("paper, Table 3 (NR), SRCC/PLCC".ljust(30) + "".join(c.rjust(14) for c in TABLE3_COLUMNS))
    for name, vals in TABLE3.items():
        lines.append(f"  {name}".ljust(30) + "".join(f"{vals[2 * i]:.3f}/{vals[2 * i + 1]:.3f}".rjust(14) for i in range(3)))
    return "\n".join(lines)
