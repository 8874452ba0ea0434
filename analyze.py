"""Look inside fine-tuned VLMs and their data: one subcommand per analysis, each with its own --help, each writing a
JSON of its numbers and, where a person would rather look, a PNG.

    python analyze.py level-precision --meta IQA-PyTorch/pyiqa/data/meta_info      # what the MOS -> 5 levels conversion keeps
    python analyze.py mix-ratio --run true --repeats 1 --grid_a 0.25,1,4 --grid_b 0.5,1,2  # Q-SiT Alg. 1 steps 1-2
    python analyze.py semantic-shift --ckpt out/ablation/encoder --ckpt out/ablation/projector
    python analyze.py feature-baseline --data data/demo               # the classes without a VLM: a bar for one
    python analyze.py hard-samples --data data/demo_score --pred out/score_tiny/predictions_score.jsonl
    python analyze.py logit-lens --ckpt out/pw_stage2 --mode two_stage --data data/demo_pathway
    python analyze.py attention --ckpt out/pw_one_stage --mode one_stage --data data/demo_pathway

Each analysis lives with its line of work: level-precision in scoring.py, mix-ratio in data_mix.py, semantic-shift and
feature-baseline in distortion.py, hard-samples in hard_samples.py, logit-lens and attention in quality_token.py.
Booleans are spelled true / false.
"""
from iqa_vlm.studies import data_mix
from iqa_vlm.studies import distortion
from iqa_vlm.studies import hard_samples
from iqa_vlm.studies import quality_token
from iqa_vlm.studies import scoring
from iqa_vlm.studies import two_stage
from iqa_vlm.common import boolean, run_subcommand


def level_precision_args(p):
    p.add_argument("--meta", default=None, help="folder of IQA-PyTorch meta_info_*.csv files (e.g. a clone of IQA-PyTorch: pyiqa/data/meta_info)")
    p.add_argument("--agiqa", default=None, help="AGIQA-3K's released data.csv (or its folder): Table II's AGIQA-3K row")
    p.add_argument("--data", default=None, help="prepared score folder(s), comma-separated (prepare_data.py --task score)")
    p.add_argument("--out", default="out", help="output folder")


def mix_ratio_args(p):
    p.add_argument("--points", default=None, help="fit only: a CSV with columns ratio,score (e.g. a points_step1.csv)")
    p.add_argument("--degree", type=int, default=4, help="polynomial degree (the paper's 4; lowered for fewer points)")
    p.add_argument("--out", default="out/mix_ratio", help="output folder")
    p.add_argument("--run", type=boolean, default=False, help="Algorithm 1 steps 1-2: train the small model over both grids")
    p.add_argument("--score_data", default="data/demo_score", help="--run: D1, scoring (a prepared folder)")
    p.add_argument("--interpret_data", default="data/demo_mcq", help="--run: D2, interpreting (the demo: its MCQ view)")
    p.add_argument("--general_data", default="data/demo", help="--run: D3, general (the demo stands in with its distortion records)")
    p.add_argument("--qbench_val", default="data/demo_mcq", help="--run: LLVisionQA-dev (prepare_data.py --task qbench)")
    p.add_argument("--qbench_split", default="val", help="--run: the split of --qbench_val scored")
    p.add_argument("--iqa_split", default="val", help="--run: the split of --score_data scored (SRCC/PLCC)")
    p.add_argument("--model", default="tiny", help="--run: the small model (the paper's: LLaVA-OneVision-0.5B)")
    p.add_argument("--max_steps", type=int, default=300, help="--run: training steps per run")
    p.add_argument("--repeats", type=int, default=3, help="--run: runs per ratio, seeds 0..N-1 (the paper's 3)")
    p.add_argument("--grid_a", default=None, help="--run: step 1 ratios |D2|/|D3| (default the paper's 19: 0.1..1, 1.11..10)")
    p.add_argument("--grid_b", default=None, help="--run: step 2 ratios |D2+D3|/|D1| (default the paper's 0.1..0.9, 1..10)")
    p.add_argument("--train_args", default="config/demo.py",
                   help="--run: train.py arguments before each run's own (a config file, flags), e.g. 'config/qsit_mini.py'")


def semantic_shift_args(p):
    p.add_argument("--ckpt", dest="ckpts", action="append", required=True,
                   help="a train.py output folder (repeat: one column each)")
    p.add_argument("--data", default=None, help="prepared folder(s); default: the first checkpoint's training data")
    p.add_argument("--split", default="test")
    p.add_argument("--pool", default="both", choices=["mean", "max", "both"],
                   help="mean: score the token-mean vector; max: best single token; both: report both")
    p.add_argument("--limit", type=int, default=2000, help="at most this many samples (seeded random subset); 0 = all")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--label_embedding", default="base", choices=["base", "own"],
                   help="L in the 'after' terms: base: the base model's embedding (Eq. 1 as printed); own: the fine-tuned "
                        "model's (the only reading under which an LM-only run can move Similarity)")
    p.add_argument("--out", default="out/semantic_shift", help="output folder")


def hard_samples_args(p):
    p.add_argument("--data", default="data/demo", help="prepared folder(s) with the records (mos, std, image)")
    p.add_argument("--split", default="test")
    p.add_argument("--pred", default=None, help="q_w from a weak model: JSONL of its predictions, id and score per row")
    p.add_argument("--experts", default=None, help="q_w from FR expert metrics (mean of), e.g. psnr,ssim,ms_ssim")
    p.add_argument("--n", type=int, default=16, help="NR: samples to select (the authors: 150)")
    p.add_argument("--lam", type=float, default=1e-2, help="lambda, weight of Div (the authors' 1e-2)")
    p.add_argument("--eps", type=float, default=1.0, help="eps in sigma^2 + eps (the authors' 1)")
    p.add_argument("--sigma", type=float, default=0.0, help="sigma on the [0, 1] scale for records without a std")
    p.add_argument("--features", default="clip:openai/clip-vit-base-patch32",
                   help="Div features: clip:MODEL (the authors' ViT-B/32), vlm:MODEL_OR_CKPT (its visual tokens), thumbnail")
    p.add_argument("--div", default="cosine", choices=["cosine", "nearest_rms"],
                   help="cosine: 1 - cos to the picked set's mean feature (the authors'); nearest_rms: distance to the nearest pick")
    p.add_argument("--feature_norm", default="none", choices=["none", "authors"],
                   help="none: Div on the features as the paper defines it; authors: each feature's sign pattern, what "
                        "their code's F.normalize(feat, dim=0) on a [1, 512] tensor gives (reproduces their selection)")
    p.add_argument("--fr", type=boolean, default=False, help="two-level selection: references, then their hardest images")
    p.add_argument("--n_refs", type=int, default=15, help="FR: references to select (the authors' 15)")
    p.add_argument("--per_ref", type=int, default=10, help="FR: images per selected reference (the authors' 10)")
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
    p.add_argument("--limit", type=int, default=720, help="samples (a seeded draw; 0 = all). The two-stage paper's Fig. 5 "
                                                          "averages 720 Q-Pathway samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=out, help="output folder")


def logit_lens_args(p):
    quality_token_args(p, "out/logit_lens")
    p.add_argument("--layers", type=int, default=3, help="the last k decoder layers (all if there are fewer); the paper's "
                                                      "Fig. 6 decodes from the 30th of mPLUG-Owl2's 32 layers: 30, 31, 32")
    p.add_argument("--topk", type=int, default=4, help="tokens listed per layer and sample (the paper's Fig. 3: the four "
                                                     "most probable candidates)")
    p.add_argument("--focus", default="poor", help="token frequency per layer for samples predicted this level")


def feature_baseline_args(p):
    p.add_argument("--data", default="data/demo", help="a prepared distortion folder (train.jsonl fits, --split scores)")
    p.add_argument("--split", default="test")
    p.add_argument("--out", default="out/feature_baseline")
    p.add_argument("--seed", type=int, default=0)


def distortion_tables_args(p):
    p.add_argument("--ablation", default=None, help="ablation.py's OUT/ablation.json")
    p.add_argument("--shift", default=None, help="semantic-shift's OUT/semantic_shift.json")
    p.add_argument("--pool", default="mean", choices=["mean", "max"], help="which pooling of the shift table to show")


def two_stage_tables_args(p):
    p.add_argument("--one_stage", default=None, help="folder of evaluate.py two-stage --pipeline one_stage (eval_one_stage.json)")
    p.add_argument("--two_stage", default=None, help="folder of evaluate.py two-stage (eval_two_stage.json)")
    p.add_argument("--baseline", default=None, help="Table 2's baseline: folder of evaluate.py two-stage --pipeline "
                                                    "one_stage --model MAGAer13/mplug-owl2-llama2-7b (the untuned model)")
    p.add_argument("--q_align", default=None, help="Table 2's Q-Align: folder of evaluate.py score --model "
                                                   "q-future/one-align (eval_score.json)")
    p.add_argument("--instability", action="append", default=[], metavar="NAME=ONE_DIR,TWO_DIR",
                   help="per dataset (SPAQ+KONIQ, LIVE, CSIQ): the folders of evaluate.py instability, one-stage and "
                        "two-stage (repeat)")


# subcommand -> (what it runs, its arguments, one line of help)
COMMANDS = {
    "level-precision": (scoring.level_precision_report, level_precision_args,
                        "SRCC/PLCC of the 5-level conversion vs the scores per dataset (Q-SiT Table II)"),
    "mix-ratio": (data_mix.mix_ratio, mix_ratio_args,
                  "Q-SiT Algorithm 1 steps 1-2: the coarse D1:D2:D3 mix and λ (--run), or a degree-4 fit of points"),
    "semantic-shift": (distortion.semantic_shift, semantic_shift_args,
                       "how far the visual tokens moved toward the label token per fine-tuned part (Table 2)"),
    "hard-samples": (hard_samples.select, hard_samples_args,
                     "select difficult, diverse samples from a weak model's errors (Wu et al. 2024), NR or FR"),
    "logit-lens": (quality_token.logit_lens_report, logit_lens_args,
                   "logit lens at the quality token: top tokens and level probabilities per layer"),
    "feature-baseline": (distortion.feature_baseline, feature_baseline_args,
                         "a bar without a VLM: global image statistics + gradient-boosted trees, per class and photo"),
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
