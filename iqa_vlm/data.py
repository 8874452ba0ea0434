"""Records (LLaVA/ShareGPT-form JSONL, see docs/DESIGN.md) and everything between them and model inputs, for every
script: reading and writing prepared folders, LLaVA-JSON instruction data, batching. (The training data mix of
train.py --mix is Q-SiT's, in iqa_vlm/studies/data_mix.py.)

    from iqa_vlm.data import load_records, encode_batch
    records = load_records(["data/demo"], "train")
    batch = encode_batch(processor, records[:8], train=True)  # input_ids, attention_mask, pixel_values, labels

Prompts go through the processor's own chat template, so the tiny model and real checkpoints take the
same path. Loss is on assistant turns only (labels -100 elsewhere). The label sets below are those of the
data format; each study owns its prompts.
"""
import hashlib
import json
import os
import random
import re
import shutil
import sys
from collections import Counter, OrderedDict

import torch
from PIL import Image
from tqdm import tqdm

from iqa_vlm.common import atomic_write_json, atomic_write_jsonl, check_writable, folder_lock, read_jsonl, release_folder_lock

IGNORE = -100
LABELS = ["blur", "noise", "brightness", "compression", "contrast", "colorfulness", "jitter", "clean"]  # 8 classes
LEVELS = ["bad", "poor", "fair", "good", "excellent"]  # quality levels, worst to best
LEVEL_PREFIX = "The quality of the image is"  # Q-Align's answer, "The quality of the image is {level}." (scoring, stage 2)


def load_records(data_dirs, split):
    """Records of `split` from one or more prepared folders, image (and ref_image) paths made absolute."""
    if isinstance(data_dirs, str):
        data_dirs = [d for d in data_dirs.split(",") if d]
    records = []
    for d in data_dirs:
        path = os.path.join(d, f"{split}.jsonl")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: --data expects folders written by prepare_data.py "
                                    f"(train.jsonl, test.jsonl, meta.json)")
        for i, r in enumerate(read_jsonl(path), 1):
            problem = record_problem(r) if isinstance(r, dict) else "expected a JSON object"
            if problem:
                raise ValueError(f"{path}:{i}: {problem}")
            for key in ("image", "ref_image"):  # ref_image: the reference of a distorted image (FR), where known
                if r.get(key):
                    r[key] = r[key] if os.path.isabs(r[key]) else os.path.join(d, r[key])
            records.append(r)
    return records


def load_image(path):
    """An image file -> 8-bit RGB as it is meant to be seen: EXIF orientation applied (PIL's exif_transpose, as viewers
    and browsers show a phone photo), 16-bit and 32-bit gray images scaled to 8 bits (PIL's convert would clip them:
    a 16-bit PNG came out nearly white)."""
    from PIL import ImageOps
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                import numpy as np
                arr = np.asarray(im, dtype=np.float64)
                full = 1.0 if im.mode == "F" and arr.max(initial=0) <= 1 else 65535.0
                im = Image.fromarray(np.clip(np.round(arr / full * 255), 0, 255).astype(np.uint8), "L")
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except Exception as e:
        raise ValueError(f"cannot read image {path}: {e}") from None


ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "system": "system"}


def turns_problem(conv):
    """What is wrong with a conversation, or None: a non-empty list of {from, value} turns, known roles, text values."""
    if not isinstance(conv, list) or not conv:
        return "'conversations' must be a non-empty list of {from, value} turns"
    for k, t in enumerate(conv):
        if not isinstance(t, dict) or not isinstance(t.get("value"), str):
            return f"turn {k}: expected {{from, value}} with value text, got {str(t)[:60]!r}"
        if t.get("from") not in ROLES:
            return f"turn {k}: role {t.get('from')!r}, expected human/gpt (or user/assistant, system)"
    return None


def record_problem(r):
    """What is wrong with a record's fields, or None: conversations a list of {from, value} turns with known roles and
    text values, image a path (text) or absent, exactly one <image> tag when it has an image and none when not."""
    conv = r.get("conversations")
    problem = turns_problem(conv)
    if problem:
        return problem
    for key in ("image", "ref_image"):
        if r.get(key) is not None and not isinstance(r[key], str):
            return f"'{key}' must be a path (text), got {type(r[key]).__name__}"
    tags = sum(t["value"].count("<image>") for t in conv)
    if r.get("image") and tags != 1:
        return f"{tags} <image> tags for one image (expected exactly one, in a human turn)"
    if not r.get("image") and tags:
        return f"{tags} <image> tag(s) but no image"
    return None


def to_messages(conversations, has_image):
    """ShareGPT turns -> chat-template messages. '<image>' in a human turn becomes an image item."""
    messages = []
    for turn in conversations:
        role = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                "system": "system"}.get(turn["from"])
        if role is None:
            raise ValueError(f"unknown conversation role {turn['from']!r} (expected human/gpt/system)")
        text = turn["value"]
        content = []
        if role == "user" and "<image>" in text:
            if not has_image:
                raise ValueError("a turn says <image> but the record has no image")
            before, after = text.split("<image>", 1)
            content += ([{"type": "text", "text": before.strip()}] if before.strip() else [])
            content += [{"type": "image"}] + ([{"type": "text", "text": after.strip()}] if after.strip() else [])
        else:
            content.append({"type": "text", "text": text})
        messages.append({"role": role, "content": content})
    return messages


def render(processor, messages, add_generation_prompt=False):
    return processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)


def tokenize_batch(processor, texts, images, padding_side="right", records=()):
    """Text-only batches (stage 2) go through the tokenizer alone; a batch is all-image or all-text."""
    if images and len(images) != len(texts):
        without = [r.get("id") for r in records if not r.get("image")][:3]
        raise ValueError(f"a batch mixes {len(images)} records with an image and {len(texts) - len(images)} without "
                         f"(e.g. {without}): text-only records (stage 2) need batches of their own")
    tok = processor.tokenizer
    tok.padding_side = padding_side
    if images:  # one list per sample: Gemma3 and Idefics3 want them nested, the others take either
        return processor(text=texts, images=[[im] for im in images], return_tensors="pt", padding=True)
    return tok(texts, return_tensors="pt", padding=True)


def _find(seq, sub, start):
    """First index >= start where list `sub` occurs in list `seq`, or -1."""
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i:i + len(sub)] == sub:
            return i
    return -1


_RENDERED = OrderedDict()  # (processor, conversation) -> rendered_turns' result; the most recent 8192


def rendered_turns(processor, conversations, has_image):
    """(the conversation rendered by the chat template, [(position in its text-only tokens, the assistant turn's token
    ids)] per assistant turn). Three renders and two tokenizations per record cost the 2-core demo a third of its data
    time, and its 19,197 training records hold 8 distinct conversations: results are kept for the most recent 8192."""
    key = (id(processor), has_image, json.dumps(conversations, sort_keys=True))
    if key in _RENDERED:
        _RENDERED.move_to_end(key)
        return _RENDERED[key]
    tok = processor.tokenizer
    msgs = to_messages(conversations, has_image)
    turn_ids = []
    for j, m in enumerate(msgs):
        if m["role"] == "assistant":
            start = len(tok(render(processor, msgs[:j], add_generation_prompt=True))["input_ids"])
            ids = tok(render(processor, msgs[:j + 1]))["input_ids"]
            turn_ids.append((start, ids[start:]))
    _RENDERED[key] = (render(processor, msgs), turn_ids)
    if len(_RENDERED) > 8192:
        _RENDERED.popitem(last=False)
    return _RENDERED[key]


def encode_batch(processor, records, train=True, transform=None):
    """Training batch: full conversations, labels only on assistant turns.

    Each assistant turn's tokens are found by rendering the conversation up to that turn (with the
    generation prompt) and up to its end, tokenizing both, and taking the difference. The processor
    then expands image placeholders (and some, like PaliGemma's, add tokens at either end), so each
    turn's tokens are looked up in the final ids, left to right, from where the text put them.
    """
    texts, images, turns = [], [], []
    for r in records:
        if r.get("image"):
            img = load_image(r["image"])
            images.append(transform(img) if transform else img)
        text, turn_ids = rendered_turns(processor, r["conversations"], bool(r.get("image")))
        if not turn_ids:
            raise ValueError(f"record {r.get('id')}: no assistant turn to learn from")
        texts.append(text)
        turns.append(turn_ids)
    enc = tokenize_batch(processor, texts, images, records=records)
    labels = torch.full_like(enc["input_ids"], IGNORE)
    for b, turn_ids in enumerate(turns):
        ids = enc["input_ids"][b].tolist()
        pos = 0
        for start, answer in turn_ids:
            at = _find(ids, answer, max(pos, start))
            if at < 0:
                raise ValueError(f"record {records[b].get('id')}: the answer's tokens {answer} are not in the processed "
                                 f"input (does the processor's chat template change the answer text?)")
            labels[b, at:at + len(answer)] = enc["input_ids"][b, at:at + len(answer)]
            pos = at + len(answer)
    enc["labels"] = labels
    return enc


def answer_prefix_text(processor, messages, answer_prefix):
    """Rendered prompt that ends exactly where the answer's next word starts (teacher forcing)."""
    marker = "\u2063MARK"  # an invisible separator no template emits
    full = render(processor, messages + [{"role": "assistant", "content": [{"type": "text", "text": answer_prefix + " " + marker}]}])
    return full[:full.index(marker)].rstrip(" ")


def encode_prompts(processor, records, answer_prefix=None, suffix=None, padding_side="right", after_prompt="", transform=None):
    """Prompts only (user turns), optionally followed by a teacher-forced answer prefix (one string for all
    records, or a list with one per record), rendered by the chat template; or followed by `after_prompt`, raw text
    put after the generation prompt as it is (Q-SiT's evaluation appends "The quality of this image is " so).

    Returns the batch and, per row, the index of its last real token (where the next-token logits
    are read)."""
    texts, images = [], []
    for i, r in enumerate(records):
        prefix = answer_prefix[i] if isinstance(answer_prefix, (list, tuple)) else answer_prefix
        system = [c for c in r["conversations"] if c["from"] == "system"][:1]  # kept ahead of the first user turn
        convs = [c for c in r["conversations"] if c["from"] not in ("gpt", "assistant", "system")][:1]
        if suffix:
            convs = [{"from": convs[0]["from"], "value": convs[0]["value"] + "\n" + suffix}]
        msgs = to_messages(system + convs, bool(r.get("image")))
        if r.get("image"):
            img = r["image"] if isinstance(r["image"], Image.Image) else load_image(r["image"])  # a path, or decoded
            images.append(transform(img) if transform else img)  # e.g. test-time flips (distortion --tta)
        texts.append(answer_prefix_text(processor, msgs, prefix) if prefix
                     else render(processor, msgs, add_generation_prompt=True) + after_prompt)
    enc = tokenize_batch(processor, texts, images, padding_side, records)
    last = enc["attention_mask"].sum(1) - 1 if padding_side == "right" else torch.full((len(texts),), enc["input_ids"].shape[1] - 1)
    return enc, last


def closed_set_token_ids(processor, words=LEVELS, answer_prefix=LEVEL_PREFIX):
    """Token id of each word's first sub-token as it follows `answer_prefix` in an answer (by default: the five
    quality levels after LEVEL_PREFIX, the closed set every scoring path reads).

    Uses the tokenizer's own leading-space handling. Two words sharing a first token cannot be told
    apart by one next-token softmax: that is an error showing the tokenization."""
    tok = processor.tokenizer
    base = tok(answer_prefix, add_special_tokens=False)["input_ids"]
    ids, pieces = [], {}
    for w in words:
        full = tok(answer_prefix + " " + w, add_special_tokens=False)["input_ids"]
        if full[:len(base)] != base or len(full) == len(base):
            raise ValueError(f"tokenizing {answer_prefix + ' ' + w!r} does not extend the prefix's tokens {base}: {full}")
        ids.append(full[len(base)])
        pieces[w] = tok.convert_ids_to_tokens(full[len(base):])
    if len(set(ids)) != len(ids):
        raise ValueError(f"words of the closed set share a first token, so they cannot be scored apart: {pieces}")
    if tok.unk_token_id is not None and tok.unk_token_id in ids:
        raise ValueError(f"some words of the closed set are unknown to the tokenizer: {pieces}")
    return ids


def closed_set_meta(words=LEVELS, answer_prefix=LEVEL_PREFIX):
    """The closed set a prepared folder's answers end in, as its meta.json records it: the answer's fixed prefix and
    the words that may follow it (prepare_data.py writes it; every stage that scores a closed set reads it back)."""
    return {"answer_prefix": answer_prefix, "closed_set": list(words)}


def read_closed_set(data_dirs, expect=None):
    """(words, answer_prefix) from the meta.json of each prepared folder in `data_dirs` (a list or a comma-separated
    string); the folders must agree, and with `expect` (the words a study's evaluation is written for) the words
    must be those. A folder whose meta.json records none (an instruction set, or a folder written before meta.json
    carried it) is an error naming it."""
    if isinstance(data_dirs, str):
        data_dirs = [d for d in data_dirs.split(",") if d]
    found = {}
    for d in data_dirs:
        path = os.path.join(d, "meta.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: --data expects folders written by prepare_data.py")
        with open(path) as f:
            meta = json.load(f)
        if not isinstance(meta.get("closed_set"), list) or not isinstance(meta.get("answer_prefix"), str):
            raise ValueError(f"{path} records no closed set ('answer_prefix' and 'closed_set', task "
                             f"{meta.get('task')!r}): this needs a folder of prepare_data.py --task score, distortion or "
                             f"pathway; a folder prepared by an older version: prepare it again")
        found[d] = (meta["closed_set"], meta["answer_prefix"])
    if not found:
        raise ValueError("no --data folder given to read the closed set from")
    if len(set(map(repr, found.values()))) > 1:
        raise ValueError(f"the --data folders record different closed sets: {found}")
    words, prefix = next(iter(found.values()))
    if expect is not None and list(expect) != words:
        raise ValueError(f"{', '.join(found)}: meta.json's closed set is {words}; this evaluation is for {list(expect)}")
    return words, prefix


def with_system(record, text):
    """A copy of the record with a system turn `text` first (unchanged if it already has one)."""
    if record["conversations"] and record["conversations"][0]["from"] == "system":
        return record
    return {**record, "conversations": [{"from": "system", "value": text}] + record["conversations"]}


def with_instruction(record, text):
    """A copy of the record whose first human turn starts with `text` (Q-SiT's scoring data: "Assume you are an image
    quality evaluator. How would you rate the quality of this image?\n<image>"); the image placeholder stays where
    it is. Unchanged if the turn already starts with it."""
    turns = [dict(t) for t in record["conversations"]]
    for t in turns:
        if t["from"] == "human":
            if not t["value"].replace("<image>", "").strip().startswith(text):
                lead = "<image>\n" if t["value"].startswith("<image>") else ""
                t["value"] = lead + text + " " + t["value"][len(lead):]
            break
    return {**record, "conversations": turns}


def as_trained(record, system=None, image_first=False):
    """The record as a recipe's training code shows it to the model: a system turn `system` first (where it has
    none), and with image_first the image placeholder taken out of the first human turn and put ahead of it,
    "<image>\n" + the rest (Q-Align's and DeQA-Score's preprocess_multimodal does this to every training sample)."""
    if system:
        record = with_system(record, system)
    if image_first:
        turns = [dict(t) for t in record["conversations"]]
        for t in turns:
            if t["from"] == "human" and "<image>" in t["value"]:
                t["value"] = ("<image>\n" + t["value"].replace("<image>", "").strip()).strip()
                break
        record = {**record, "conversations": turns}
    return record


# ----------------------------------------------------------------------------- prepared folders and instruction data
PREPARED = ".prepared"  # prepare_data.py's marker in a folder it wrote: {"written_by", "files": the names it wrote there}
# what a marker written before the manifest existed stands for
LEGACY_FILES = {"train.jsonl", "val.jsonl", "test.jsonl", "official_val.jsonl", "meta.json"}  # files only: never a folder
OWN_ENTRY = re.compile(r"^\.[^/]+\.(lock|partial-\w+|old-\w+)$")  # a subfolder's lock, a temporary folder: not data
RUN_MARKS = ("config.json", "trainable.safetensors", "resume.pt", "current", ".run")  # a train.py run (train.py --out)


def prepared_files(out):
    """The names prepare_data.py wrote in `out` (its marker's manifest), or None when `out` has no marker."""
    path = os.path.join(out, PREPARED)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return set(json.load(f)["files"])
    except (ValueError, KeyError, TypeError):
        return set(LEGACY_FILES)


def claim_output(out):
    """prepare_data.py writes only into a folder that is absent, or holds nothing but what it wrote there itself (its
    marker's manifest): it never deletes or overwrites a file it did not write, a training run above all. One writer at
    a time, and no writer while train.py reads the folder (common.folder_lock). Left-over temporary folders of an earlier
    prepare into `out` (.OUT.partial-* and .OUT.old-*, with its marker) are removed; a user's OUT.partial is not ours. -> the real path of out, marked."""
    out = os.path.realpath(out)  # a link to a folder: write the folder
    folder_lock(out, "prepare_data.py")
    parent, base = os.path.split(out)
    for name in os.listdir(parent):
        left = os.path.join(parent, name)
        if name.startswith((f".{base}.partial-", f".{base}.old-")) and os.path.isfile(os.path.join(left, PREPARED)):
            shutil.rmtree(left, ignore_errors=True)
    if os.path.isdir(out):
        held = {n for n in os.listdir(out) if n != PREPARED and not OWN_ENTRY.match(n)}
        foreign = sorted(held - (prepared_files(out) or set()))
        if foreign:
            run = [f for f in foreign if f in RUN_MARKS or f.startswith("checkpoint-")]
            raise SystemExit(f"prepare_data.py: --out {out} holds " + (f"a training run ({', '.join(run[:4])})" if run else
                             "files it did not write") + f": {', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}"
                             f"; give a new or empty folder")
    elif os.path.lexists(out):
        raise SystemExit(f"prepare_data.py: --out {out} is a file, not a folder")
    check_writable(out, "prepare_data.py")
    if prepared_files(out) is None:
        record_written(out, [])
    return out


def record_written(out, names, replace=False):
    """Adds `names` (entries of `out`) to the manifest of what prepare_data.py wrote there; replace=True: they are all
    of it now, and what the manifest listed besides (an earlier prepare's outputs) is removed."""
    before = prepared_files(out) or set()
    if replace:
        for name in sorted(before - set(names)):
            path = os.path.join(out, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
    files = sorted(set(names) | (set() if replace else before))
    atomic_write_json(os.path.join(out, PREPARED), {"written_by": "prepare_data.py", "files": files})


def write_splits(out, splits, meta):
    """OUT/{train,val,test}.jsonl then OUT/meta.json last (a folder with meta.json is complete); the files an earlier
    prepare wrote there and this one does not are removed."""
    out = claim_output(out)
    if os.path.exists(os.path.join(out, "meta.json")):
        os.unlink(os.path.join(out, "meta.json"))
    names = [f"{name}.jsonl" for name in splits] + ["meta.json"]
    record_written(out, names)  # listed before they exist: a crash leaves nothing unlisted
    for name, recs in splits.items():
        atomic_write_jsonl(os.path.join(out, f"{name}.jsonl"), recs)
    meta["counts"] = {name: {"n": len(recs), "by_source": dict(sorted(Counter(r["source"] for r in recs).items())),
                             "by_level": dict(Counter(r["level"] for r in recs if r.get("level")))}
                      for name, recs in splits.items()}
    atomic_write_json(os.path.join(out, "meta.json"), meta)
    record_written(out, names, replace=True)
    release_folder_lock(out)
    print(f"wrote {', '.join(f'{len(r)} {n}' for n, r in splits.items())} records -> {out}")
    return meta


MAX_CHARS = 32000  # a record's text; real instruction data stays far below (our choice: ~8k tokens, a VLM's context)


def read_instruction(path, image_root=None, task="describe", source=None, max_chars=MAX_CHARS):
    """Instruction data in LLaVA JSON form (a list of {id, image, conversations}; also JSONL) -> records in the
    project's JSONL form, every turn of multi-turn conversations kept. Image paths are resolved against
    image_root (default: the JSON's folder) and made absolute. Records whose image is missing are dropped and
    counted (an error if all images are missing: a wrong --image_root). Returns (records, report)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        entries = json.loads(text)
    except json.JSONDecodeError:
        entries = []
        for no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{no}: neither a JSON list nor JSON lines ({e.msg})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of {{id, image, conversations}}, found {type(entries).__name__}")
    image_root = os.path.abspath(image_root or os.path.dirname(os.path.abspath(path)))
    source = source or os.path.splitext(os.path.basename(path))[0]
    records, missing, skipped, turns, found = [], [], Counter(), Counter(), 0
    for i, e in enumerate(entries, 1):
        where = f"{path} entry {i}"
        conv = e.get("conversations") if isinstance(e, dict) else None
        problem = turns_problem(conv) if conv != [] else None  # an empty one has no answer: counted below
        if problem:
            raise ValueError(f"{where}: {problem}")
        conv = [{"from": ROLES[t["from"]], "value": t["value"]} for t in conv]
        if not any(t["from"] == "gpt" for t in conv):
            skipped["no answer turn"] += 1
            continue
        image = e.get("image")
        if not (image is None or isinstance(image, str) or isinstance(image, list) and all(isinstance(x, str) for x in image)):
            raise ValueError(f"{where}: 'image' must be a path or a list of paths, got {type(image).__name__}")
        if sum(len(t["value"]) for t in conv) > max_chars:  # one runaway record would take all memory at its batch
            skipped[f"over {max_chars} characters"] += 1
            continue
        if isinstance(image, list):
            if len(image) != 1:
                skipped["several images"] += 1
                continue
            image = image[0]
        n_tags = sum(t["value"].count("<image>") for t in conv)
        if image:
            image = image if os.path.isabs(image) else os.path.join(image_root, image)
            if not os.path.isfile(image):
                missing.append(image)
                continue
            found += 1
            if n_tags > 1:
                skipped["several <image> tags"] += 1
                continue
            if n_tags == 0:  # LLaVA puts the tag in the first human turn; add it where it is absent
                k = next(j for j, t in enumerate(conv) if t["from"] == "human")
                conv[k] = {"from": "human", "value": "<image>\n" + conv[k]["value"]}
        elif n_tags:
            skipped["<image> tag without an image"] += 1
            continue
        turns[sum(t["from"] == "gpt" for t in conv)] += 1
        records.append({"id": f"{source}/{e.get('id', i)}", **({"image": image} if image else {}),
                        "conversations": conv, "task": task, "source": source})
    if missing and not found:
        raise ValueError(f"{path}: none of the {len(missing)} images was found below {image_root} "
                         f"(e.g. {missing[0]}); pass --image_root DIR")
    report = {"entries": len(entries), "kept": len(records), "missing_images": len(missing),
              "missing_examples": missing[:5], "skipped": dict(skipped), "image_root": image_root,
              "answer_turns": {str(k): v for k, v in sorted(turns.items())}}
    return records, report


def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def exclude_test_images(records, test_dirs):
    """Leaves out of instruction records every one whose image is also a test image of the prepared folders
    `test_dirs` (comma-separated): same file name, or same content (sha256; a copy under another name). Q-SiT
    cleans its data so; a generic name (1.jpg) shared by two unrelated images is dropped too: the count says how many
    went by name only. -> (kept records, report)."""
    tests = [r for d in test_dirs.split(",") if d for r in load_records([d], "test") if r.get("image")]
    if not tests:
        raise ValueError(f"--exclude_test {test_dirs}: no test records with an image there")
    names = {os.path.basename(r["image"]).lower() for r in tests}
    digests = {file_digest(r["image"]) for r in tests if os.path.isfile(r["image"])}
    kept, by_name, by_content, seen = [], 0, 0, {}
    for r in tqdm(records, desc="exclude_test", unit="record", mininterval=1.0):
        image = r.get("image")
        if image and os.path.basename(image).lower() in names:
            by_name += 1
            continue
        if image:
            if image not in seen:
                seen[image] = file_digest(image)
            if seen[image] in digests:
                by_content += 1
                continue
        kept.append(r)
    report = {"test_folders": test_dirs, "test_images": len(tests), "dropped_by_name": by_name,
              "dropped_by_content": by_content, "kept": len(kept)}
    print(f"exclude_test: {by_name} records dropped by test image name, {by_content} by content, {len(kept)} kept", file=sys.stderr)
    return kept, report


def make_instruct(path, out, image_root=None, task="describe", seed=0, val_frac=0.05, exclude_test=None, max_chars=MAX_CHARS):
    """LLaVA-form instruction data -> OUT/train.jsonl, val.jsonl (val_frac, seeded), an empty test.jsonl; with
    exclude_test, records whose image is in those folders' test sets are left out first (exclude_test_images)."""
    records, report = read_instruction(path, image_root, task, max_chars=max_chars)
    if exclude_test:
        records, report["excluded_test_images"] = exclude_test_images(records, exclude_test)
    rng, splits = random.Random(f"{seed}:{path}"), {"train": [], "val": [], "test": []}
    for r in records:
        splits["val" if rng.random() < val_frac else "train"].append(r)
    print(f"{path}: {report['kept']} of {report['entries']} conversations kept, {report['missing_images']} with a "
          f"missing image dropped{' (e.g. ' + report['missing_examples'][0] + ')' if report['missing_examples'] else ''}, "
          f"skipped {report['skipped'] or 'none'}; answer turns per conversation {report['answer_turns']}")
    return write_splits(out, splits, {"task": task, "source_file": os.path.abspath(path), "seed": seed, "report": report})
