"""Look inside fine-tuned VLMs and their data: one subcommand per analysis, each with its own --help, each writing a
JSON of its numbers and, where a person would rather look, a PNG.

    python analyze.py level-precision --meta ../shared/iqa_meta      # what the MOS -> 5 levels conversion keeps
    python analyze.py mix-ratio --points points.csv                  # degree-4 fit, argmax (--run true: make the points)
    python analyze.py semantic-shift --ckpt out/ablation/encoder --ckpt out/ablation/projector
    python analyze.py hard-samples --data data/demo_score --pred out/score_tiny/predictions_score.jsonl
    python analyze.py logit-lens --ckpt out/pw_stage2 --mode two_stage --data data/demo_pathway
    python analyze.py attention --ckpt out/pw_one_stage --mode one_stage --data data/demo_pathway

Each analysis lives with its line of work: level-precision and mix-ratio in scoring.py, semantic-shift in
distortion.py, hard-samples in hard_samples.py, logit-lens and attention in quality_token.py. Booleans are spelled
true / false.
"""
import distortion
import hard_samples
import quality_token
import scoring
import two_stage
from common import boolean, run_subcommand


def level_precision_args(p):
    p.add_argument("--meta", default=None, help="folder of IQA-PyTorch meta_info_*.csv files (e.g. ../shared/iqa_meta)")
    p.add_argument("--data", default=None, help="prepared score folder(s), comma-separated (prepare_data.py --task score)")
    p.add_argument("--out", default="out", help="output folder")


def mix_ratio_args(p):
    p.add_argument("--points", default=None, help="CSV with columns ratio,score (written by --run)")
    p.add_argument("--degree", type=int, default=4, help="polynomial degree (lowered when there are fewer points)")
    p.add_argument("--out", default="out/mix_ratio", help="output folder")
    p.add_argument("--run", type=boolean, default=False, help="train the small model at each ratio to make the points")
    p.add_argument("--ratios", default="0.25,0.5,1,2,4", help="--run: interpreting weights (scoring weight 1)")
    p.add_argument("--data", default="data/demo_score,data/demo_interpret", help="--run: SCORE_DIR,INTERPRET_DIR")
    p.add_argument("--model", default="tiny", help="--run: the small model")
    p.add_argument("--max_steps", type=int, default=300, help="--run: training steps per ratio")
    p.add_argument("--split", default="val", help="--run: split of the score data that gives the score")
    p.add_argument("--train_args", default="config/demo.py",
                   help="--run: train.py arguments before the mix's own (a config file, flags), e.g. 'config/demo.py "
                        "--batch_size 16'")


def semantic_shift_args(p):
    p.add_argument("--ckpt", dest="ckpts", action="append", required=True,
                   help="a train.py output folder (repeat: one column each)")
    p.add_argument("--data", default=None, help="prepared folder(s); default: the first checkpoint's training data")
    p.add_argument("--split", default="test")
    p.add_argument("--pool", default="both", choices=["mean", "max", "both"],
                   help="mean: score the token-mean vector; max: best single token; both: report both")
    p.add_argument("--limit", type=int, default=2000, help="at most this many samples (seeded random subset); 0 = all")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--out", default="out/semantic_shift", help="output folder")


def hard_samples_args(p):
    p.add_argument("--data", default="data/demo", help="prepared folder(s) with the records (mos, std, image)")
    p.add_argument("--split", default="test")
    p.add_argument("--pred", required=True, help="JSONL of the weak model's predictions: id, score per row")
    p.add_argument("--n", type=int, default=16, help="NR: samples to select")
    p.add_argument("--lam", type=float, default=10.0,
                   help="lambda: weight of Div against the error term (10: a thumbnail 0.1 RMS away weighs as much as a "
                        "prediction one sigma off)")
    p.add_argument("--eps", type=float, default=1e-4, help="eps in sigma^2 + eps")
    p.add_argument("--sigma", type=float, default=0.1, help="sigma on the [0, 1] scale where a source has no std at all")
    p.add_argument("--fr", type=boolean, default=False, help="two-level selection: references, then their hardest images")
    p.add_argument("--n_refs", type=int, default=4, help="FR: references to select")
    p.add_argument("--per_ref", type=int, default=4, help="FR: images per selected reference")
    p.add_argument("--out", default="out/hard_samples", help="output folder")


def quality_token_args(p, out):
    p.add_argument("--ckpt", default=None, help="a train.py output folder (stage 2 -> two_stage mode, else one_stage)")
    p.add_argument("--model", default="tiny", help="untuned model, without --ckpt")
    p.add_argument("--data", default=None, help="a pathway folder (prepare_data.py --task pathway) or score data; "
                                                "default: the checkpoint's, else data/demo_pathway")
    p.add_argument("--split", default="test")
    p.add_argument("--mode", default=None, choices=["one_stage", "two_stage"],
                   help="which pipeline's input (default: two_stage for a --stage 2 checkpoint, else one_stage)")
    p.add_argument("--description", default="generated", choices=["generated", "reference"],
                   help="the description the model writes (greedy) or the record's own")
    p.add_argument("--max_new_tokens", type=int, default=64, help="length of the generated description")
    p.add_argument("--limit", type=int, default=64, help="samples (a seeded draw); 0 = all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=out, help="output folder")


def logit_lens_args(p):
    quality_token_args(p, "out/logit_lens")
    p.add_argument("--layers", type=int, default=4, help="the last k decoder layers (all if there are fewer)")
    p.add_argument("--topk", type=int, default=5, help="tokens listed per layer and sample")
    p.add_argument("--focus", default="poor", help="token frequency per layer for samples predicted this level")


def distortion_tables_args(p):
    p.add_argument("--ablation", default=None, help="ablation.py's OUT/ablation.json")
    p.add_argument("--shift", default=None, help="semantic-shift's OUT/semantic_shift.json")
    p.add_argument("--pool", default="mean", choices=["mean", "max"], help="which pooling of the shift table to show")


def two_stage_tables_args(p):
    p.add_argument("--one_stage", default=None, help="folder of evaluate.py two-stage --pipeline one_stage (eval_one_stage.json)")
    p.add_argument("--two_stage", default=None, help="folder of evaluate.py two-stage (eval_two_stage.json)")
    p.add_argument("--instability", action="append", default=[], metavar="NAME=ONE_DIR,TWO_DIR",
                   help="per dataset (SPAQ+KONIQ, LIVE, CSIQ): the folders of evaluate.py instability, one-stage and "
                        "two-stage (repeat)")


# subcommand -> (what it runs, its arguments, one line of help)
COMMANDS = {
    "level-precision": (scoring.level_precision_report, level_precision_args,
                        "SRCC/PLCC of the 5-level conversion vs the scores per dataset (Q-SiT Table II)"),
    "mix-ratio": (scoring.mix_ratio, mix_ratio_args,
                  "fit a degree-4 polynomial to (mix ratio, score) points, report the argmax; --run makes the points"),
    "semantic-shift": (distortion.semantic_shift, semantic_shift_args,
                       "how far the visual tokens moved toward the label token per fine-tuned part (Table 2)"),
    "hard-samples": (hard_samples.select, hard_samples_args,
                     "select difficult, diverse samples from a weak model's errors (Wu et al. 2024), NR or FR"),
    "logit-lens": (quality_token.logit_lens_report, logit_lens_args,
                   "logit lens at the quality token: top tokens and level probabilities per layer"),
    "distortion-tables": (distortion.paper_tables, distortion_tables_args,
                          "Tables 1 and 2 of the distortion paper in its shape, this run's numbers beside the paper's"),
    "two-stage-tables": (two_stage.paper_tables, two_stage_tables_args,
                         "Tables 1 and 2 of the two-stage paper in its shape, this run's numbers beside the paper's"),
    "attention": (quality_token.attention_report, lambda p: quality_token_args(p, "out/attention"),
                  "attention from the quality token to image / prompt / description tokens"),
}


def main(argv=None):
    return run_subcommand(__doc__, COMMANDS, argv)


if __name__ == "__main__":
    main()
