"""Score anyone's images with a released scorer, a train.py run or any model of the repo: the closed-set softmax over
the five quality levels, one prefill per batch, no generation.

    python evaluate.py score --model q-future/one-align --images photos/ --out scores.csv     # a folder, recursively
    python evaluate.py score --ckpt out/run --images 'shots/*.png' --out scores.csv --batch_size 16
    python evaluate.py score --model zhiyuanyou/DeQA-Score-Mix3 --images list.txt --out scores.csv  # one path per line

    from iqa_vlm import Scorer
    scorer = Scorer("q-future/one-align")
    scores = scorer(["a.jpg", pil_image])          # tensor [N]: 1 (bad) .. 5 (excellent), higher is better

The CSV has one row per image: `image` (the path as given), `score` (1-5, the expectation over the levels),
`score01` ((score - 1) / 4), the level probabilities (p_bad .. p_excellent) and `error` (why an image was not
scored: unreadable files are listed, not fatal). Rows are appended batch by batch; a run killed and started again on the
same --out scores only the images not in it yet; at the end the file is rewritten in the input's order.

Prompts (--prompt, PROMPT_OF for auto): scorer is the released mPLUG-Owl2 scorers' own prompt (Q-Align / OneAlign's
QAlignScorer, DeQA-Score's Scorer); qinstruct Q-Instruct's scorer (three levels: p_poor, p_average, p_good); qsit
Q-SiT's evaluation prompt; qalign the conversation train.py teaches (a run's own prompt, and Q-Align's paper
evaluation). Scores do not depend on the batch: each row is right-padded, so its tokens
never attend to padding; in fp32 they agree across batch sizes to float rounding (tests: batch sizes 1, 3 and 8 within
1e-5). --batch_invariant true scores one image per prefill, so that not even the rounding depends on the batch.
"""
import csv
import glob
import io
import json
import os
import time
from collections import Counter

import torch
from tqdm import tqdm

from iqa_vlm.common import atomic_write, atomic_write_json
from iqa_vlm.data import LEVEL_PREFIX, load_image, read_closed_set
from iqa_vlm.model import eval_device, family_of, load_evaluated
from iqa_vlm.studies.data_mix import uses_instruction
from iqa_vlm.studies.scoring import EVALUATOR_INSTRUCTION, SCORE_QUESTION, level_ids_for, level_probs, level_words

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".jfif", ".ppm", ".pgm")
# --prompt auto: a released checkpoint's own prompt, known by the name it is loaded by; else by its family
PROMPT_OF = [("q-align-aesthetic", None), ("q-align-vqa", None), ("one-align", "scorer"), ("q-align", "scorer"),
             ("deqa-score", "scorer"), ("q-instruct", "qinstruct"), ("qinstruct", "qinstruct"), ("q-sit", "qsit")]
FAMILY_PROMPT = {"mplug_owl2": "scorer"}


def auto_prompt(name, model, ckpt=None):
    """The prompt a model is scored with by default: a train.py run its own (qalign), a released checkpoint its authors'
    scorer's (by name), an untuned mPLUG-Owl2 the released scorers', anything else the conversation train.py teaches."""
    if ckpt:
        return "qalign"
    low = (name or "").lower()
    for key, prompt in PROMPT_OF:
        if key in low:
            if prompt is None:
                raise SystemExit(f"{name}: a checkpoint for aesthetics or video, whose released prompt is not a preset "
                                 f"here; name one with --prompt")
            return prompt
    return FAMILY_PROMPT.get(family_of(model), "qalign")


def list_images(spec):
    """The images `spec` names, in a fixed order: a folder (recursively, by extension, sorted), a glob pattern (sorted),
    a text file with one path per line (blank lines and '# ...' skipped; in its order), or one image file. Paths stay
    as given. Repeated paths are scored once. -> (paths, number of repeats dropped)."""
    if os.path.isdir(spec):
        paths = sorted(os.path.join(root, f) for root, _, files in os.walk(spec) for f in files
                       if f.lower().endswith(IMAGE_EXTENSIONS))
    elif os.path.isfile(spec) and not spec.lower().endswith(IMAGE_EXTENSIONS):
        with open(spec, **ENC) as f:
            paths = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    elif os.path.isfile(spec):
        paths = [spec]
    else:
        paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
    if not paths:
        raise SystemExit(f"--images {spec}: no images there (a folder, a glob pattern, a list file or an image file; "
                         f"extensions {', '.join(IMAGE_EXTENSIONS)})")
    unique = list(dict.fromkeys(paths))
    return unique, len(paths) - len(unique)


def fields(prompt):
    """The CSV's columns: image, score (1..5), score01, one probability per level word (low to high), error."""
    return ["image", "score", "score01"] + [f"p_{w.lower()}" for w in level_words(prompt)] + ["error"]


ENC = dict(encoding="utf-8", errors="surrogateescape")  # file names that are not UTF-8 go through unchanged


def read_done(out, columns):
    """{image: row} of a CSV an earlier (perhaps killed) run wrote. A file with other columns (not this command's, or
    another prompt's levels) is an error naming it, and is left as it is; in ours, a last line cut off mid-write is
    dropped."""
    if not os.path.exists(out):
        return {}
    with open(out, "rb") as f:
        data = f.read()
    header = data.split(b"\n", 1)[0].decode(**ENC)
    if data and header != ",".join(columns):
        raise SystemExit(f"--out {out}: not a scores CSV of this command and prompt (its columns: {header[:200]}; "
                         f"expected {','.join(columns)}); give another --out")
    if data and not data.endswith(b"\n"):  # killed inside a write: keep the complete lines only
        data = data[:data.rfind(b"\n") + 1]
        with open(out, "rb+") as f:
            f.truncate(len(data))
    return {r["image"]: r for r in csv.DictReader(io.StringIO(data.decode(**ENC)))}


def check_same_run(out, identity):
    """The scorer and prompt of an earlier run on this --out (OUT.json beside it) must be this run's: rows of two
    scorers never mix in one file."""
    side = out + ".json"
    if os.path.exists(side):
        with open(side) as f:
            before = json.load(f)
        if before != identity:
            raise SystemExit(f"--out {out} holds the scores of {before}; this run is {identity}: give another --out")
    else:
        atomic_write_json(side, identity)


class ImageFiles(torch.utils.data.Dataset):
    """Decodes images in DataLoader workers: (path, RGB image or None, error or None)."""

    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return self.paths[i], load_image(self.paths[i]), None
        except FileNotFoundError:
            return self.paths[i], None, "not found"
        except (OSError, ValueError) as e:  # load_image names the file; the row does already
            return self.paths[i], None, "unreadable: " + str(e).split(": ", 1)[-1].replace("\n", " ")


def size_key(path):
    """Sort key that groups images of one shape (the same number of visual tokens in anyres families): (aspect, area),
    from the file's header only."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            w, h = im.size
        return (round(w / h, 3), w * h)
    except Exception:  # unreadable: the worker says why
        return (0.0, 0)


def to_pil(images):
    """A list of PIL images or paths, or a float tensor [B, 3, H, W] in [0, 1] (pyiqa's convention) -> PIL RGB images."""
    from PIL import Image
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"Scorer: a tensor batch must be [B, 3, H, W] in [0, 1], got {tuple(images.shape)}")
        arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arr]
    return [im.convert("RGB") if isinstance(im, Image.Image) else load_image(im) for im in images]


class Scorer:
    """A quality metric in pyiqa's conventions: higher is better (lower_better False), scores in score_range (1, 5).

    Scorer(model) takes a hub id, a folder or 'tiny[:FAMILY]'; Scorer(ckpt=RUN) a train.py run. prompt: auto (see
    auto_prompt) or one of scoring.PROMPTS. Calling it on a list of PIL images or paths, or on a [B, 3, H, W] tensor in
    [0, 1], returns a float tensor of scores; probs() also the level probabilities (self.levels, low to high). A prompt
    of K levels scores 1 + 4 (probs @ [0, 1/(K-1), .., 1]): Q-Instruct's three levels map onto the same 1..5."""
    lower_better = False
    score_range = (1.0, 5.0)

    def __init__(self, model=None, ckpt=None, prompt="auto", batch_size=8, device=None, dtype=None,
                 allow_unfinished=False):
        dev, dt = eval_device()
        self.device, self.batch_size = device or dev, batch_size
        self.model, self.processor, self.config, self.name = load_evaluated(ckpt, model, self.device, dtype or dt,
                                                                            allow_unfinished)
        self.prompt = auto_prompt(model or self.config.get("model"), self.model, ckpt) if prompt == "auto" else prompt
        # a run is asked as evaluate.py score --data asks it: its data's answer prefix, Q-SiT's instruction after a --mix
        self.instruction = EVALUATOR_INSTRUCTION if ckpt and uses_instruction(self.config.get("mix")) else None
        self.answer_prefix = LEVEL_PREFIX
        if ckpt:
            try:
                self.answer_prefix = read_closed_set(self.config["data"])[1]
            except (OSError, ValueError):  # the run's data moved: the prefix every prepared folder records by default
                pass
        self.level_ids = level_ids_for(self.processor, self.prompt, self.answer_prefix)
        self.levels = level_words(self.prompt)

    def probs(self, images):
        """(probs [N, K] over self.levels (low to high), scores [N] on 1..5) on the CPU, in batches of batch_size."""
        images = to_pil(images)
        order = sorted(range(len(images)), key=lambda i: (round(images[i].width / images[i].height, 3),
                                                          images[i].width * images[i].height))  # one shape per batch
        probs, scores = torch.empty(len(images), len(self.level_ids)), torch.empty(len(images))
        for i in range(0, len(images), self.batch_size):
            rows = order[i:i + self.batch_size]
            probs[rows], scores[rows] = self.batch([images[j] for j in rows])
        return probs, scores

    def batch(self, images):
        """One prefill for a list of PIL images -> (probs, scores) on the CPU."""
        records = [{"id": str(i), "image": im, "conversations": [{"from": "human", "value": SCORE_QUESTION + "\n<image>"}]}
                   for i, im in enumerate(images)]  # the user turn of --prompt qalign (the others bring their own)
        probs, score01, _ = level_probs(self.model, self.processor, records, self.prompt, self.level_ids, self.device,
                                        self.instruction, self.answer_prefix)
        return probs.float().cpu(), 1 + 4 * score01.float().cpu()

    def __call__(self, images):
        return self.probs(images)[1]


def score_images(images, out, ckpt=None, model=None, prompt="auto", batch_size=8, batch_invariant=False, workers=2,
                 allow_unfinished=False):
    """evaluate.py score --images: score every image `images` names into the CSV `out` (see the module's docstring)."""
    paths, repeats = list_images(images)
    if not out or not out.lower().endswith(".csv"):
        raise SystemExit(f"--images writes a CSV: give --out FILE.csv (got {out!r})")
    scorer = Scorer(model, ckpt, prompt, 1 if batch_invariant else batch_size, allow_unfinished=allow_unfinished)
    columns = fields(scorer.prompt)
    done = {p: r for p, r in read_done(out, columns).items() if not r["error"]}  # failed rows are tried again
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    check_same_run(out, {"model": scorer.name, "ckpt": os.path.abspath(ckpt) if ckpt else None, "prompt": scorer.prompt})
    todo = sorted((p for p in paths if p not in done), key=size_key)
    print(f"{scorer.name}: {len(paths)} images ({len(paths) - len(todo)} already in {out}"
          f"{f', {repeats} repeated paths dropped' if repeats else ''}), prompt {scorer.prompt}, "
          f"batch {scorer.batch_size}{' (batch-invariant)' if batch_invariant else ''}")
    fresh = not os.path.exists(out) or os.path.getsize(out) == 0
    loader = torch.utils.data.DataLoader(ImageFiles(todo), batch_size=scorer.batch_size, num_workers=workers,
                                         collate_fn=list)
    start, n_scored = time.time(), 0
    with open(out, "a", newline="", **ENC) as f, tqdm(total=len(todo), desc="score", unit="img") as bar:
        if fresh:
            f.write(",".join(columns) + "\n")
        for items in loader:
            rows = {p: {"image": p, "error": err} for p, im, err in items if im is None}
            rows.update(score_rows(scorer, [(p, im) for p, im, _ in items if im is not None], columns))
            buf = io.StringIO()
            csv.DictWriter(buf, columns, restval="", lineterminator="\n").writerows(rows[p] for p, _, _ in items)
            f.write(buf.getvalue())  # one write per batch, then to disk: a kill loses at most the batch in flight
            f.flush()
            os.fsync(f.fileno())
            n_scored += sum(1 for r in rows.values() if not r["error"])
            bar.update(len(items))
    rows = finish(out, paths, columns)
    errors = Counter(r["error"].split(":")[0] for r in rows.values() if r["error"])
    seconds = time.time() - start
    print(f"scored {n_scored} images in {seconds:.1f} s ({n_scored / max(seconds, 1e-9):.2f} images/s); {len(rows)} rows "
          f"in {out}; not scored: {sum(errors.values())}" + (f" ({dict(errors)})" if errors else ""))
    return {"n": len(rows), "scored_now": n_scored, "not_scored": sum(errors.values()), "prompt": scorer.prompt,
            "out": out}


def score_rows(scorer, items, columns):
    """{path: CSV row} for decoded images, one prefill; if the batch fails, image by image, each failure a row with
    its reason (a run does not die at the same batch on every restart)."""
    if not items:
        return {}
    try:
        probs, scores = scorer.batch([im for _, im in items])
    except Exception as e:
        if len(items) == 1:
            return {items[0][0]: {"image": items[0][0], "error": f"failed: {type(e).__name__}: {e}".replace("\n", " ")}}
        return {k: v for item in items for k, v in score_rows(scorer, [item], columns).items()}
    return {p: {"image": p, "score": f"{s:.6f}", "score01": f"{(s - 1) / 4:.6f}",
                **{c: f"{x:.6f}" for c, x in zip(columns[3:-1], pr)}, "error": ""}
            for (p, _), pr, s in zip(items, probs.tolist(), scores.tolist())}


def finish(out, paths, columns):
    """Rewrite the CSV atomically: the input's images in its order, then rows of earlier runs on other images as they
    were. -> its rows."""
    rows = read_done(out, columns)
    given = set(paths)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows([rows[p] for p in paths if p in rows] + [r for p, r in rows.items() if p not in given])
    atomic_write(out, buf.getvalue().encode(**ENC))
    return rows
