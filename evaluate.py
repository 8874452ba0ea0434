"""Evaluate a fine-tuned (or untuned) VLM: one subcommand per line of work, each with its own --help.

    python evaluate.py distortion --ckpt out/run                 # data and model from the run's config.json
    python evaluate.py distortion --model tiny                   # untuned baseline: options list appended (the paper's)
    python evaluate.py score --ckpt out/score --data data/demo_score              # SRCC/PLCC per source
    python evaluate.py score --ckpt out/A --ckpt out/B --data data/score --logistic true --out out/table
    python evaluate.py prompting --protocol double --prompting cot --model tiny --data data/demo --limit 32
    python evaluate.py prompting-table --model tiny --data data/demo --limit 32     # all nine systems, Table 1's shape
    python evaluate.py prompting --model api:gpt-4o --api_base https://api.openai.com/v1 --data data/score --limit 150
    python evaluate.py two-stage --ckpt out/pw_stage2 --describer out/pw_stage1 --data data/demo_pathway
    python evaluate.py two-stage --pipeline one_stage --ckpt out/pw_one_stage --data data/demo_pathway
    python evaluate.py instability --sessions 3 --repeats 5 --temperature 0.5 --ckpt out/pw_stage2 --data data/demo_pathway
    python evaluate.py qbench --ckpt out/qsit_mini --data data/llvqa_dev --split val    # Q-SiT Table V's columns
    python evaluate.py score --ckpt out/qsit_mini --data data/score --prompt qsit       # Q-SiT's own scoring prompt
    python evaluate.py sampled-score --ckpt out/r1 --data data/koniq_all,data/spaq_all --k 8   # train_grpo.py runs

distortion (distortion.py): closed-set argmax over the 8 class tokens after "The image has some", plus free generation
parsed for the class word -> OUT/eval_distortion.json, OUT/confusion.png.
score (scoring.py): closed-set softmax over the five level tokens after "The quality of the image is" -> score =
probs @ [1..5]; SRCC/PLCC per source; the cross-dataset table (rows: trained on, columns: tested on).
prompting (prompting.py): single / double / multiple stimulus x standard / cot / icl, NR or FR.
two-stage, instability (two_stage.py): describe then rate the description (or the one-stage baseline); the share of
samples whose repeated sampled answers disagree.
sampled-score (grpo.py): the mean score of K sampled reasoning answers (VisualQuality-R1, Q-Insight prompts).
qbench, describe (qbench.py): LLVisionQA accuracy (closed set over the option marks; parsed free answers); LLDescribe
descriptions written out for a GPT judge.

OUT is --out, else the checkpoint folder's eval/ (train.py --overwrite removes it with the run), else
out/untuned_MODEL; a --limit N run without --out writes to OUT/limitN/, never over a whole-split result (not the
prompting study's, whose --limit is its sample size). Before any
model loads: the arguments, the run (shared-locked: train.py cannot replace it meanwhile), its data (the run's own data
must be what it trained on: --allow_changed_data true to go on anyway) and that OUT is writable. Booleans are spelled
true / false.
"""
import os

from iqa_vlm.studies import distortion
from iqa_vlm.studies import grpo
from iqa_vlm.studies import prompting
from iqa_vlm.studies import prompting_table
from iqa_vlm.studies import qbench
from iqa_vlm.studies import scorer
from iqa_vlm.studies import scoring
from iqa_vlm.studies import two_stage
from iqa_vlm.common import boolean, check_writable, folder_lock, run_subcommand
from iqa_vlm.model import eval_out, read_run_config
from iqa_vlm.run_folder import check_data


def common_args(p, several_ckpts=False):
    if several_ckpts:
        p.add_argument("--ckpt", dest="ckpts", action="append", default=[],
                       help="a train.py output folder (repeat: one table row each)")
    else:
        p.add_argument("--ckpt", default=None, help="a train.py output folder")
    p.add_argument("--model", default=None, help="untuned model (without --ckpt): tiny, a hub id or a local path")
    p.add_argument("--data", default=None, help="prepared folder(s), comma-separated; default: the run's training data")
    p.add_argument("--split", default="test")
    p.add_argument("--out", default=None, help="where results go (default: the checkpoint folder)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--limit", type=int, default=0, help="evaluate at most N records (0 = all)")
    p.add_argument("--allow_unfinished", type=boolean, default=False,
                   help="evaluate a run that did not finish (killed, diverged, periodic checkpoint); its JSON says so")
    p.add_argument("--allow_changed_data", type=boolean, default=False,
                   help="evaluate on the run's data although it changed since training (a warning, not an error)")


def distortion_args(p):
    common_args(p)
    p.add_argument("--generate", type=boolean, default=True, help="also answer freely and parse the class word")
    p.add_argument("--options", default="auto", choices=["auto", "yes", "no"],
                   help="append the options list to the question (auto: only for untuned models)")
    p.add_argument("--tta", type=boolean, default=False,
                   help="average the closed-set probabilities over the 8 flips/rotations of each image (the demo's option)")


def score_args(p):
    common_args(p, several_ckpts=True)
    p.add_argument("--logistic", type=boolean, default=False,
                   help="the table shows PLCC after the 4-parameter logistic fit (DeQA-Score's), not raw PLCC (Q-Align's, "
                        "Q-SiT's); eval_score.json has both either way")
    p.add_argument("--instruction", default="auto", choices=["auto", "yes", "no"],
                   help="start the question with Q-SiT's 'Assume you are an image quality evaluator.' (auto: if the run "
                        "used a --mix)")
    p.add_argument("--table", default=None, help="where the cross-dataset table JSON goes (default OUT/score_table.json)")
    p.add_argument("--prompt", default="auto", choices=["auto", *scoring.PROMPTS],
                   help="qalign: the records' question, 'The quality of the image is' in the answer (what train.py teaches, "
                        "Q-Align's paper evaluation); qsit: Q-SiT's released evaluation prompt; scorer: the released "
                        "mPLUG-Owl2 scorers' prompt (Q-Align/OneAlign, DeQA-Score); qinstruct: Q-Instruct's scorer (three "
                        "levels); auto: qalign on --data, with --images the checkpoint's own (scorer.auto_prompt)")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples for the 95%% intervals of SRCC/PLCC/KRCC (0: none)")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    p.add_argument("--images", default=None,
                   help="score these images instead of --data (a folder, searched recursively; a glob; a text file with "
                        "one path per line): --out FILE.csv, one row per image")
    p.add_argument("--batch_invariant", type=boolean, default=False,
                   help="with --images: one image per prefill, so that no score depends on its batch even by rounding")
    p.add_argument("--workers", type=int, default=2, help="with --images: DataLoader workers decoding images")


def qbench_args(p):
    common_args(p)
    p.set_defaults(split="val", batch_size=16, data="data/demo_mcq")
    p.add_argument("--prompt", default="qsit", choices=list(qbench.PROMPT_STYLES),
                   help="qsit: Q-SiT's released evaluation (question, then the option lines); qbench: the benchmark's "
                        "rendering; letter: '... Answer with the option's letter ...' (lmms-eval, Q-Align)")
    p.add_argument("--generate", type=boolean, default=True,
                   help="answer greedily and judge it by Q-SiT's released rule (its protocol); false: closed set only")
    p.add_argument("--max_new_tokens", type=int, default=200, help="Q-SiT's evaluation: 200")
    p.add_argument("--closed_set", type=boolean, default=False,
                   help="also the argmax over the option marks' next-token probabilities (our option)")


def describe_args(p):
    p.add_argument("--ckpt", default=None, help="a train.py output folder")
    p.add_argument("--model", default=None, help="untuned model (without --ckpt)")
    p.add_argument("--images", required=True, help="folder of the images to describe (LLDescribe's)")
    p.add_argument("--out", default=None)
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--allow_unfinished", type=boolean, default=False)
    p.add_argument("--allow_changed_data", type=boolean, default=False)


def prompting_args(p):
    common_args(p)
    p.add_argument("--protocol", default="single", choices=list(prompting.N_IMAGES),
                   help="single / double / multiple stimulus")
    p.add_argument("--prompting", default="standard", choices=list(prompting.PROMPTINGS),
                   help="standard, chain-of-thought (describe first) or in-context (one worked example)")
    p.add_argument("--reference", type=boolean, default=False, help="full-reference (records need ref_image)")
    p.add_argument("--max_new_tokens", type=int, default=0, help="answer length (0: standard/icl 24, cot 256)")
    p.add_argument("--seed", type=int, default=0, help="draws of --limit, of the pairs/quadruples, of the icl example")
    p.add_argument("--rounds", type=int, default=0, help="queries per image (0: double 4, multiple 2)")
    p.add_argument("--icl_split", default="train", help="split the icl worked example comes from")
    prompting_choices(p)
    api_args(p)


def api_args(p):
    p.add_argument("--api_base", default=None, help="--model api:MODEL: the OpenAI-compatible endpoint, e.g. "
                   "https://api.openai.com/v1 or http://localhost:8000/v1 (vLLM)")
    p.add_argument("--api_key_env", default="OPENAI_API_KEY", help="the environment variable holding the key (never "
                   "printed or written)")
    p.add_argument("--api_concurrency", type=int, default=4, help="requests in flight at most")
    p.add_argument("--api_retries", type=int, default=6, help="retries of a 429/5xx/timeout (exponential backoff, jitter)")
    p.add_argument("--no_cache", type=boolean, default=False, help="send every request again (default: answers already "
                   "in OUT/api_cache/ are reused)")
    p.add_argument("--api_temperature", type=float, default=None, help="default: the API's own (the authors set none)")
    p.add_argument("--api_detail", default=None, choices=["low", "high", "auto"],
                   help="the images' detail setting (default: none sent, as the authors' code)")


def prompting_choices(p):
    p.add_argument("--prompts", default="paper", choices=list(prompting.PROMPT_SETS),
                   help="paper: the study's own prompts and answer format; plain: this repo's earlier wording")
    p.add_argument("--aggregation", default="thurstone", choices=list(prompting.AGGREGATIONS),
                   help="double/multiple answers -> scores: Thurstone Case V MAP (the authors') or Bradley-Terry")
    p.add_argument("--unparsed", default="random", choices=["random", "drop"],
                   help="an answer without the asked numbers: a seeded random one (the authors' fallback) or dropped")
    p.add_argument("--bt_prior", type=float, default=prompting.BT_PRIOR, help="Bradley-Terry prior (virtual tied games)")


def prompting_table_args(p):
    p.add_argument("--ckpt", default=None, help="a train.py output folder")
    p.add_argument("--model", default=None, help="untuned model (without --ckpt)")
    p.add_argument("--data", default=None, help="NR folder(s): records with image and MOS")
    p.add_argument("--fr_data", default=None, help="FR folder(s): records with image, MOS and ref_image")
    p.add_argument("--split", default="test")
    p.add_argument("--out", default=None)
    p.add_argument("--limit", type=int, default=150, help="images drawn per run (the authors sample 150 per dataset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_new_tokens", type=int, default=0)
    p.add_argument("--allow_unfinished", type=boolean, default=False)
    p.add_argument("--allow_changed_data", type=boolean, default=False)
    p.add_argument("--prompts", default="paper", choices=list(prompting.PROMPT_SETS))
    p.add_argument("--aggregation", default="thurstone", choices=list(prompting.AGGREGATIONS))
    p.add_argument("--unparsed", default="random", choices=["random", "drop"])
    api_args(p)


def pathway_args(p):
    common_args(p)
    p.add_argument("--pipeline", default="two_stage", choices=["two_stage", "one_stage"],
                   help="two_stage: describe, then rate the description text only; one_stage: the whole feedback")
    p.add_argument("--describer", default=None, help="two_stage: a checkpoint that writes the stage-1 descriptions "
                                                     "(default: the --ckpt model itself)")
    p.add_argument("--max_new_tokens", type=int, default=64, help="length of the generated description / feedback")
    p.add_argument("--seed", type=int, default=0, help="the draw of --limit (instability: session s samples with seed + s)")


def two_stage_args(p):
    pathway_args(p)
    p.add_argument("--latency_n", type=int, default=16, help="images timed one at a time (batch 1)")


def instability_args(p):
    pathway_args(p)
    p.add_argument("--sessions", type=int, default=3, help="sessions S (the paper: 3)")
    p.add_argument("--repeats", type=int, default=5, help="answers R per sample and session (the paper: 5)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--fixed_description", type=boolean, default=False,
                   help="describe once (greedy) and sample only what follows the description "
                        "(two_stage: the stage-2 answer; one_stage: the conclusion)")


def sampled_score_args(p):
    common_args(p)
    p.set_defaults(batch_size=8)
    p.add_argument("--k", type=int, default=1, help="sampled answers averaged per image (VisualQuality-R1's released "
                                                     "inference samples once)")
    p.add_argument("--reward", default="auto", help="whose prompt: vqr1 or qinsight (auto: the run's --reward, else vqr1)")
    p.add_argument("--temperature", type=float, default=None, help="default: the model's generation config (their README)")
    p.add_argument("--top_k", type=int, default=50)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--max_new_tokens", type=int, default=512, help="their batch inference: 512")
    p.add_argument("--seed", type=int, default=0, help="sampling, and the random score of an answer without one")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples for the 95%% intervals (0: none)")
    p.add_argument("--logistic", type=boolean, default=False, help="also an interval for the logistic-fitted PLCC")


# subcommand -> (what it runs, its arguments, one line of help)
def score(images=None, ckpts=(), batch_invariant=False, workers=2, **kw):
    if not images:
        return scoring.evaluate(ckpts=ckpts, **kw)
    if len(ckpts) > 1:
        raise SystemExit("evaluate.py score --images: give one --ckpt (or --model)")
    return scorer.score_images(images, kw["out"], ckpts[0] if ckpts else None, kw.get("model"), kw["prompt"],
                               kw["batch_size"], batch_invariant, workers, kw["allow_unfinished"])


score.__doc__ = scoring.evaluate.__doc__ + "\n\nWith --images:\n" + scorer.__doc__


COMMANDS = {
    "distortion": (distortion.evaluate, distortion_args, "name the distortion: closed-set accuracy, confusion matrix"),
    "score": (score, score_args,
              "quality scores: SRCC/PLCC/KRCC per source, the cross-dataset table; --images: a CSV of any images' scores"),
    "prompting": (prompting.evaluate, prompting_args, "prompting study: one protocol x prompting style, NR or FR"),
    "prompting-table": (prompting_table.table, prompting_table_args,
                        "prompting study: all nine systems (NR and FR) in Table 1's shape, expert FR baselines"),
    "two-stage": (two_stage.evaluate, two_stage_args, "two-stage (or one-stage) reasoning: SRCC/PLCC, latency"),
    "instability": (two_stage.instability, instability_args, "instability ratio of repeated sampled answers"),
    "sampled-score": (grpo.evaluate, sampled_score_args,
                      "reasoning scorers (train_grpo.py runs): the mean score of K sampled answers, SRCC/PLCC per source"),
    "qbench": (qbench.evaluate, qbench_args, "LLVisionQA multiple-choice accuracy per type and concern (Q-SiT Table V)"),
    "describe": (qbench.describe, describe_args, "LLDescribe: write the model's descriptions for a GPT judge"),
}


POSITIVE = ("batch_size", "sessions", "repeats", "latency_n", "api_concurrency", "k")
NOT_NEGATIVE = ("limit", "max_new_tokens", "rounds", "api_retries", "bootstrap", "workers")


def at_the_door(command, fn):
    """The checks every evaluation shares, before any model loads (see the module's docstring)."""
    def run(**kw):
        who = f"evaluate.py {command}"
        allow_changed = kw.pop("allow_changed_data", False)
        for key in POSITIVE + NOT_NEGATIVE:
            if kw.get(key) is not None and (kw[key] < 0 or kw[key] == 0 and key in POSITIVE):
                raise SystemExit(f"{who}: --{key} {kw[key]}: expected a count {'> 0' if key in POSITIVE else '>= 0'}")
        ckpts = kw.get("ckpts") or ([kw["ckpt"]] if kw.get("ckpt") else [])
        if ckpts and kw.get("model"):
            raise SystemExit(f"{who}: give --ckpt (a run, whose config.json names its model) or --model, not both")
        for key in ("data", "fr_data"):
            dirs = [os.path.realpath(d) for d in (kw.get(key) or "").split(",") if d]
            if len(set(dirs)) < len(dirs):
                raise SystemExit(f"{who}: --{key} {kw[key]} names a folder twice (its records would count twice)")
        for ckpt in ckpts:
            cfg = read_run_config(ckpt, who)
            folder_lock(ckpt, "evaluate.py", shared=True)
            own = [os.path.realpath(d) for d in cfg.get("data", "").split(",") if d]
            given = [os.path.realpath(d) for d in (kw.get("data") or "").split(",") if d]
            if not kw.get("images") and (not given or set(given) <= set(own)):  # the run's own data: what it trained on
                check_data(cfg.get("data_fingerprint"), f"{who} --ckpt {ckpt}", allow_changed)
        # a partial run never overwrites a whole one; the prompting study's --limit is its sample size (the authors': 150)
        if kw.get("limit") and not kw.get("out") and ckpts and not command.startswith("prompting"):
            kw["out"] = os.path.join(eval_out(None, ckpts[0], None), f"limit{kw['limit']}")
        if kw.get("images"):  # its --out is a CSV file
            if kw.get("data"):
                raise SystemExit(f"{who}: give --images (score any images) or --data (evaluate against MOS), not both")
            if not (kw.get("out") or "").lower().endswith(".csv"):
                raise SystemExit(f"{who}: --images writes a CSV: give --out FILE.csv")
            targets = [os.path.dirname(os.path.abspath(kw["out"]))]
        else:
            targets = [kw["out"]] if kw.get("out") else [eval_out(None, c, None) for c in ckpts]
        for folder in targets:
            check_writable(folder, who)
        return fn(**kw)
    run.__doc__ = fn.__doc__
    return run


def main(argv=None):
    return run_subcommand(__doc__, {name: (at_the_door(name, fn), args, text) for name, (fn, args, text) in COMMANDS.items()},
                          argv)


if __name__ == "__main__":
    main()
