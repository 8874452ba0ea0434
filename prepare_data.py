"""Raw IQA datasets -> unified JSONL (DESIGN.md, "Data format"); with no arguments, the embedded demo set.

    python prepare_data.py                                   # demo set -> data/demo (no download, < 1 min)
    python prepare_data.py --dead_leaves 0                   # the demo's photos alone, without the dead-leaves images
    python prepare_data.py --out data/demo --seed 1          # another draw of the demo set
    python prepare_data.py --task distortion --kadid /data/kadid10k --tid2013 /data/tid2013 \\
        --live /data/databaserelease2 --csiq /data/CSIQ --out data/distortion   # any subset of the four
    python prepare_data.py --task distortion --kadid /data/kadid10k --split ref --out data/kadid_by_ref
    python prepare_data.py --task score --koniq /data/koniq10k --spaq /data/SPAQ --livec /data/ChallengeDB_release \\
        --agiqa /data/AGIQA-3K --kadid /data/kadid10k --out data/score      # also --live --csiq --tid2013 (MOS view)
    python prepare_data.py --task score --demo data/demo --out data/demo_score          # scoring view of the demo
    python prepare_data.py --task interpret --demo data/demo --out data/demo_interpret  # templated descriptions
    python prepare_data.py --task interpret --llava_json q-instruct.json --image_root /data/q-instruct-images --out data/qinstruct
    python prepare_data.py --task pathway --demo data/demo --out data/demo_pathway    # one_stage/, stage1/, stage2/
    python prepare_data.py --task pathway --llava_json q-pathway.json --image_root /data/q-pathway-images --out data/pathway
    python prepare_data.py --task general --llava_json llava_instruct_150k.json --image_root /data/coco/train2017 --out data/llava \\
        --exclude_test data/score                            # no image of a test set in the instruction data (Q-SiT)
    python prepare_data.py --task qbench --qbench_json llvisionqa_dev.json --image_root /data/qbench/images --out data/llvqa_dev
    python prepare_data.py --task qbench --demo data/demo --out data/demo_mcq           # MCQ view of the demo (tiny model)
    python prepare_data.py --task score --livec /data/ChallengeDB_release --test_frac 1 --out data/livec_all   # whole-set test

Each dataset is read from its official release layout or from the layout IQA-PyTorch (pyiqa) ships
(meta_info_*.csv); see iqa_datasets.py. Writes OUT/train.jsonl, OUT/test.jsonl, OUT/meta.json, atomically.
Each study module builds its own records (distortion.make_distortion, scoring.make_score, two_stage.make_pathway,
demo_set for the demo); this script only reads the command line. Booleans are spelled true / false.
"""
import argparse
import os
import random

from iqa_vlm.common import boolean
from iqa_vlm.data import exclude_test_images, make_instruct, read_instruction
from iqa_vlm.iqa_datasets import DATASETS, DISTORTION_SOURCES, PYIQA_META
from iqa_vlm.studies.demo_set import DEAD_LEAVES, demo_view_records, make_demo, make_demo_view
from iqa_vlm.studies.distortion import make_distortion
from iqa_vlm.studies.qbench import make_demo_mcq, make_qbench
from iqa_vlm.studies.deqa import parse_source_map
from iqa_vlm.studies.scoring import make_score
from iqa_vlm.studies.two_stage import make_pathway, pathway_parts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default=None, choices=["distortion", "score", "interpret", "general", "pathway", "qbench"],
                    help="what to build: distortion/score from IQA datasets (or score/interpret/pathway from --demo), "
                         "interpret/general/pathway from --llava_json instruction data (pathway: Q-Pathway feedback -> "
                         "one_stage, stage1, stage2 views); qbench: LLVisionQA from --qbench_json (or an MCQ view of --demo)")
    ap.add_argument("--out", default=None, help="output folder (default data/demo for the demo)")
    ap.add_argument("--seed", type=int, default=0)
    for source, (flag, what) in DATASETS.items():
        tasks = "--task distortion or score" if source in DISTORTION_SOURCES else "--task score"
        layouts = "official or IQA-PyTorch layout" if source in PYIQA_META else "official layout"
        ap.add_argument(f"--{flag}", default=None, help=f"{what} folder ({layouts}; {tasks})")
    ap.add_argument("--demo", default=None, help="a demo folder: --task score|interpret writes a view of it to --out")
    ap.add_argument("--llava_json", default=None, help="--task interpret|general: instruction data in LLaVA JSON form")
    ap.add_argument("--image_root", default=None, help="folder the --llava_json / --qbench_json image paths are relative to "
                                                        "(default: its folder)")
    ap.add_argument("--qbench_json", default=None, help="--task qbench: llvisionqa_dev.json or llvisionqa_test.json as released")
    ap.add_argument("--max_chars", type=int, default=32000,
                    help="--llava_json: records with more text than this are left out, counted in meta.json (our limit: "
                         "about 8k tokens; train.py also refuses a record longer than its model's context)")
    ap.add_argument("--exclude_test", default=None,
                    help="--llava_json: leave out every instruction record whose image is also in these prepared folders' "
                         "test sets (comma-separated), matched by file name and by content hash; counted in meta.json")
    ap.add_argument("--val_frac", type=float, default=None, help="share of the training part held out as val.jsonl "
                    "(default: 0.1 for --task score, Q-SiT's; 0.05 otherwise)")
    ap.add_argument("--pathway_split", default="6000,720",
                    help="--task pathway --llava_json: TRAIN,TEST records drawn (seeded) from those that split into a "
                         "description and a conclusion; the two-stage paper's 6,000 + 720 by default; 'all': every "
                         "record, --val_frac of them held out as val, no test (our option)")
    ap.add_argument("--paraphrases", type=boolean, default=False,
                    help="--task score: each training record's question drawn from the nine of Q-Align's training data "
                         "(its recipes); false: the one question of Q-SiT's data and of Q-Align's evaluation (val and "
                         "test always ask it)")
    ap.add_argument("--level_rule", default="released", choices=["released", "eq1"],
                    help="--task score: released (default): KonIQ's and SPAQ's levels as in the data Q-Align and Q-SiT "
                         "trained with (fifths of KonIQ's training-split range, of 0..94 for SPAQ), Eq. 1 for the others; "
                         "eq1: Eq. 1 as printed, equal fifths of each dataset's own min..max")
    ap.add_argument("--deqa_metas", default="", help="--task score: DeQA-Score's released metadata per source, "
                    "SOURCE:PATH (its mos.json, or the metas/ folder holding it), e.g. spaq:Data-DeQA-Score/SPAQ/metas: "
                    "the per-image spread their soft labels use (SPAQ's public metadata has none)")
    ap.add_argument("--soft_density", default="", help="--task score: DeQA soft-label density per source, e.g. "
                    "livec:cdf (default: koniq10k/kadid10k pdf, spaq cdf as the authors; others pdf)")
    ap.add_argument("--soft_spread", default="", help="--task score: what a source's std column holds, SOURCE:std|var "
                    "(default: kadid10k:var, its 'var' column)")
    ap.add_argument("--split", default=None, choices=["ref", "random"],
                    help="ref: --test_frac of each set by reference content (the default of --task score); random: "
                         "per image (--task distortion's default: one draw over the mix, the distortion paper's)")
    ap.add_argument("--test_frac", type=float, default=0.2, help="share of each dataset tested (1: all of it, no val)")
    ap.add_argument("--check_images", type=boolean, default=True, help="decode every image (false: faster, less safe)")
    ap.add_argument("--skip_bad_images", type=boolean, default=False,
                    help="leave out images that cannot be decoded, counted in meta.json (default: an error naming them)")
    ap.add_argument("--image_size", type=int, default=32, help="demo only: side of the crops (the tiny model's input)")
    ap.add_argument("--crops_per_class", type=int, default=96, help="demo only: crops per class per training photo")
    ap.add_argument("--dead_leaves", type=int, default=DEAD_LEAVES,
                    help="demo only: procedural dead-leaves images added to the training photos (0: the photos alone)")
    args = ap.parse_args(argv)
    check_arguments(args, ap)
    flags = [f"--{f}" for f in [flag for flag, _ in DATASETS.values()] + ["llava_json", "demo", "qbench_json"]
             if getattr(args, f)]
    if flags and not args.task:  # without --task they would be ignored and the demo built in their --out
        ap.error(f"{' '.join(flags)} need --task (distortion, score, interpret, general or pathway)")
    if args.exclude_test and not args.llava_json:
        ap.error("--exclude_test applies to --llava_json instruction data")
    if args.task == "pathway":
        return main_pathway(args, ap)
    if args.task == "qbench":
        if not args.out or bool(args.demo) == bool(args.qbench_json):
            ap.error("--task qbench needs --out and one of --qbench_json FILE or --demo DIR")
        return make_demo_mcq(args.demo, args.out, args.seed) if args.demo else \
            make_qbench(args.qbench_json, args.out, args.image_root)
    if args.task in ("interpret", "general") and args.llava_json:
        if not args.out:
            ap.error("--out is required with --llava_json")
        return make_instruct(args.llava_json, args.out, args.image_root, {"interpret": "describe", "general": "vqa"}[args.task],
                             args.seed, args.val_frac, args.exclude_test, args.max_chars)
    if args.demo:
        if args.task not in ("score", "interpret") or not args.out:
            ap.error("--demo DIR takes --task score or --task interpret, and --out")
        return make_demo_view(args.demo, args.out, args.task, args.seed, args.val_frac)
    check_images = "skip" if args.check_images and args.skip_bad_images else args.check_images
    if args.task == "score":
        datasets = {s: getattr(args, flag) for s, (flag, _) in DATASETS.items() if getattr(args, flag)}
        if not datasets or not args.out:
            ap.error("--task score needs --out and at least one of " + " ".join(f"--{f}" for f, _ in DATASETS.values()))
        try:
            density = parse_source_map(args.soft_density, ("pdf", "cdf"), "--soft_density")
            spread = parse_source_map(args.soft_spread, ("std", "var"), "--soft_spread")
        except ValueError as e:
            ap.error(str(e))
        authors = {}
        for part in [p for p in args.deqa_metas.split(",") if p]:
            source, sep, path = part.partition(":")
            if not sep or source not in datasets:
                ap.error(f"--deqa_metas {part!r}: expected SOURCE:PATH with SOURCE one of the given datasets {sorted(datasets)}")
            authors[source] = path
        return make_score(datasets, args.out, args.split or "ref", args.seed, args.test_frac, args.val_frac, check_images,
                          density, spread, args.paraphrases, authors, args.level_rule)
    if args.task in ("interpret", "general"):
        ap.error(f"--task {args.task} needs --llava_json FILE (or --demo DIR for interpret)")
    datasets = {s: getattr(args, DATASETS[s][0]) for s in DISTORTION_SOURCES if getattr(args, DATASETS[s][0])}
    if not datasets:
        if args.task:
            ap.error(f"--task {args.task} needs at least one of " + " ".join(f"--{DATASETS[s][0]}" for s in DISTORTION_SOURCES))
        return make_demo(args.out or "data/demo", args.seed, args.image_size, args.crops_per_class,
                         dead_leaves=args.dead_leaves)
    if not args.out:
        ap.error("--out is required with real datasets")
    return make_distortion(datasets, args.out, args.split or "random", args.seed, args.test_frac, check_images)


def check_arguments(args, ap):
    """Sizes and fractions checked at the door, each error naming its flag."""
    if not 0 <= args.test_frac <= 1:
        ap.error(f"--test_frac {args.test_frac}: expected a share in [0, 1] (1: test on the whole dataset)")
    if args.val_frac is None:
        args.val_frac = 0.1 if args.task == "score" and not args.demo else 0.05
    if not 0 <= args.val_frac < 1:
        ap.error(f"--val_frac {args.val_frac}: expected a share of the training part in [0, 1)")
    if args.max_chars < 1:
        ap.error(f"--max_chars {args.max_chars}: expected a positive count")
    if args.image_size < 8 or args.crops_per_class < 4:
        ap.error(f"--image_size {args.image_size} / --crops_per_class {args.crops_per_class}: expected at least 8 / 4")
    if args.skip_bad_images and not args.check_images:
        ap.error("--skip_bad_images true needs --check_images true (images are only judged when decoded)")


def main_pathway(args, ap):
    """--task pathway: from the demo set (templated descriptions, the interpret view's) or from LLaVA-form JSON."""
    if not args.out or bool(args.demo) == bool(args.llava_json):
        ap.error("--task pathway needs --out and one of --demo DIR or --llava_json FILE")
    if args.demo:  # the interpret view's records (image paths relative to a view folder: the three are siblings)
        splits, meta = demo_view_records(args.demo, os.path.join(args.out, "one_stage"), "interpret", args.seed, args.val_frac)
        return make_pathway(splits, args.out, {**meta, "source": "demo: templated descriptions of distortion and severity"})
    records, report = read_instruction(args.llava_json, args.image_root, task="reason", max_chars=args.max_chars)
    if args.exclude_test:
        records, report["excluded_test_images"] = exclude_test_images(records, args.exclude_test)
    print(f"{args.llava_json}: {report['kept']} of {report['entries']} conversations read, {report['missing_images']} "
          f"with a missing image dropped, skipped {report['skipped'] or 'none'}")
    meta = {"source_file": os.path.abspath(args.llava_json), "seed": args.seed, "read": report}
    if args.pathway_split == "all":
        rng, splits = random.Random(f"{args.seed}:{args.llava_json}"), {"train": [], "val": [], "test": []}
        for r in records:
            splits["val" if rng.random() < args.val_frac else "train"].append(r)
        return make_pathway(splits, args.out, {**meta, "pathway_split": "all", "val_frac": args.val_frac})
    try:
        n_train, n_test = (int(x) for x in args.pathway_split.split(","))
        assert n_train > 0 and n_test >= 0
    except (ValueError, AssertionError):
        ap.error(f"--pathway_split {args.pathway_split!r}: expected TRAIN,TEST counts (e.g. 6000,720) or 'all'")
    usable = [r for r in records if pathway_parts(r)[0] is not None]
    if len(usable) < n_train + n_test:
        ap.error(f"--pathway_split {n_train},{n_test}: {args.llava_json} has {len(usable)} records that split into a "
                 f"description and a conclusion (of {len(records)} read); give smaller counts or 'all'")
    drawn = random.Random(f"{args.seed}:pathway_split").sample(usable, n_train + n_test)
    splits = {"train": drawn[:n_train], "val": [], "test": drawn[n_train:]}
    print(f"pathway split: {n_train} train + {n_test} test drawn from {len(usable)} usable of {len(records)} records")
    return make_pathway(splits, args.out, {**meta, "pathway_split": {"train": n_train, "test": n_test,
                                                                     "usable": len(usable), "read": len(records)}})


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:  # DatasetError and friends name file and line; OSError: a disk full or read-only
        raise SystemExit(f"prepare_data.py: error: {e}")
