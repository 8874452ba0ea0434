"""Check the level rules against the labels Q-Align and Q-SiT released (their training and test JSONs).

    python dev/check_released_levels.py Q-SIT/training_jsons/train_koniq_qsit.json Q-SIT/training_jsons/train_spaq_qsit.json
    python dev/check_released_levels.py Q-Align/playground/data/test_jsons/test_koniq.json \\
        --meta IQA-PyTorch/pyiqa/data/meta_info        # also Eq. 1 over each dataset's range in that metadata

Each record's score is read from its id ("10004473376.jpg->77.3836206897"), its source from the image folder
("koniq/...", "spaq/..."), its label from the last word of the answer. Prints per file and level the score range
of the released labels, and how many records each rule labels the same: "released" (scoring.released_level over
scoring.RELEASED_LEVEL_RANGE) and, with --meta, "eq1" (iqa_datasets.score_level over the dataset's min..max).
Exit 1 when the released rule disagrees with any record.
"""
import argparse
import csv
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from iqa_vlm.data import LEVELS  # noqa: E402
from iqa_vlm.iqa_datasets import score_level  # noqa: E402
from iqa_vlm.studies.scoring import RELEASED_LEVEL_RANGE, released_level  # noqa: E402

FOLDER_SOURCE = {"koniq": "koniq10k", "spaq": "spaq"}
META = {"koniq10k": ("meta_info_KonIQ10kDataset.csv", "mos"), "spaq": ("meta_info_SPAQDataset.csv", "MOS")}


def released_records(path):
    """[(source, score, level)] of a released LLaVA-form JSON; an error names the record that does not parse."""
    out = []
    for i, r in enumerate(json.load(open(path))):
        try:
            score = float(r["id"].rsplit("->", 1)[1])
            source = FOLDER_SOURCE[r["image"].split("/")[0]]
            level = r["conversations"][-1]["value"].split()[-1].strip(".")
            assert level in LEVELS
        except (KeyError, IndexError, ValueError, AssertionError):
            raise SystemExit(f"{path}: record {i} (id {r.get('id')!r}): expected id NAME->SCORE, an image under "
                             f"{'/ or '.join(FOLDER_SOURCE)}/ and an answer ending in a level word")
        out.append((source, score, level))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="released JSON files")
    ap.add_argument("--meta", default=None, help="folder of IQA-PyTorch's meta_info_*.csv: adds Eq. 1's agreement")
    args = ap.parse_args(argv)
    ranges = {}
    for source, (name, col) in META.items():
        if args.meta and os.path.isfile(os.path.join(args.meta, name)):
            scores = [float(r[col]) for r in csv.DictReader(open(os.path.join(args.meta, name)))]
            ranges[source] = (min(scores), max(scores))
    all_agree = True
    for path in args.files:
        recs = released_records(path)
        for source in sorted({s for s, _, _ in recs}):
            part = [(s, lv) for src, s, lv in recs if src == source]
            spans = {lv: [s for s, l in part if l == lv] for lv in LEVELS}
            print(f"{path} [{source}] {len(part)} records: " + ", ".join(
                f"{lv} {min(v):g}-{max(v):g} ({len(v)})" for lv, v in spans.items() if v))
            agree = sum(released_level(s, *RELEASED_LEVEL_RANGE[source]) == lv for s, lv in part)
            all_agree &= agree == len(part)
            line = f"  released rule {RELEASED_LEVEL_RANGE[source]}: {agree} of {len(part)} agree"
            if source in ranges:
                eq1 = sum(score_level(s, *ranges[source]) == lv for s, lv in part)
                line += f"; eq1 over {ranges[source]}: {eq1} agree, {len(part) - eq1} differ"
            print(line)
    return 0 if all_agree else 1


if __name__ == "__main__":
    sys.exit(main())
