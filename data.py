"""From JSONL records (LLaVA/ShareGPT form, see DESIGN.md) to model inputs, for every script.

    from data import load_records, encode_batch
    records = load_records(["data/demo"], "train")
    batch = encode_batch(processor, records[:8], train=True)  # input_ids, attention_mask, pixel_values, labels

Prompts go through the processor's own chat template, so the tiny model and real checkpoints take the
same path. Loss is on assistant turns only (labels -100 elsewhere).
"""
import os

import torch
from PIL import Image

from common import read_jsonl

IGNORE = -100
LABELS = ["blur", "noise", "brightness", "compression", "contrast", "colorfulness", "jitter", "clean"]  # 8 classes
LEVELS = ["bad", "poor", "fair", "good", "excellent"]  # quality levels, worst to best
DISTORTION_QUESTION = "Looking at the image above, what is the synthetic distortion in the image?"
DISTORTION_PREFIX = "The image has some"  # the answer is "The image has some {label}."
OPTIONS_SUFFIX = ("Select from the following options: 1. Blur; 2. Noise; 3. Brightness; 4. Compression; "
                  "5. Contrast; 6. Colorfulness; 7. Jitter; 8. Clean")


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
            if "conversations" not in r:
                raise ValueError(f"{path}:{i}: record has no 'conversations' field")
            for key in ("image", "ref_image"):  # ref_image: the reference of a distorted image (FR), where known
                if r.get(key):
                    r[key] = r[key] if os.path.isabs(r[key]) else os.path.join(d, r[key])
            records.append(r)
    return records


def load_image(path):
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except Exception as e:
        raise ValueError(f"cannot read image {path}: {e}") from None


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
            content += [{"type": "image"}, {"type": "text", "text": after.strip()}]
        else:
            content.append({"type": "text", "text": text})
        messages.append({"role": role, "content": content})
    return messages


def render(processor, messages, add_generation_prompt=False):
    return processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)


def _tokenize(processor, texts, images, padding_side="right", records=()):
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


def encode_batch(processor, records, train=True, transform=None):
    """Training batch: full conversations, labels only on assistant turns.

    Each assistant turn's tokens are found by rendering the conversation up to that turn (with the
    generation prompt) and up to its end, tokenizing both, and taking the difference. The processor
    then expands image placeholders (and some, like PaliGemma's, add tokens at either end), so each
    turn's tokens are looked up in the final ids, left to right, from where the text put them.
    """
    texts, images, turns = [], [], []
    tok = processor.tokenizer
    for r in records:
        msgs = to_messages(r["conversations"], bool(r.get("image")))
        if r.get("image"):
            img = load_image(r["image"])
            images.append(transform(img) if transform else img)
        texts.append(render(processor, msgs))
        turn_ids = []  # (position in the text-only tokens, the turn's token ids), per assistant turn
        for j, m in enumerate(msgs):
            if m["role"] == "assistant":
                start = len(tok(render(processor, msgs[:j], add_generation_prompt=True))["input_ids"])
                ids = tok(render(processor, msgs[:j + 1]))["input_ids"]
                turn_ids.append((start, ids[start:]))
        if not turn_ids:
            raise ValueError(f"record {r.get('id')}: no assistant turn to learn from")
        turns.append(turn_ids)
    enc = _tokenize(processor, texts, images, records=records)
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


def encode_prompts(processor, records, answer_prefix=None, suffix=None, padding_side="right"):
    """Prompts only (user turns), optionally followed by a teacher-forced answer prefix (one string for all
    records, or a list with one per record).

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
            images.append(load_image(r["image"]))
        texts.append(answer_prefix_text(processor, msgs, prefix) if prefix
                     else render(processor, msgs, add_generation_prompt=True))
    enc = _tokenize(processor, texts, images, padding_side, records)
    last = enc["attention_mask"].sum(1) - 1 if padding_side == "right" else torch.full((len(texts),), enc["input_ids"].shape[1] - 1)
    return enc, last


def closed_set_token_ids(processor, words, answer_prefix=DISTORTION_PREFIX):
    """Token id of each word's first sub-token as it follows `answer_prefix` in an answer.

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
