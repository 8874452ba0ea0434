"""Looking at the quality token: the logit lens and the attention of the last token before the level word.

Li, Sun, Chen, Nishida, "Building reasonable inference for vision-language models in blind image quality assessment"
(the two-stage study, two_stage.py): the logit lens on the last decoder layers shows where the level is decided;
the attention from the quality token shows how much of the answer rests on the image tokens vs the description.

    python analyze.py logit-lens --ckpt out/pw_stage2 --mode two_stage --data data/demo_pathway   # logit_lens_report
    python analyze.py attention --ckpt out/pw_one_stage --mode one_stage --data data/demo_pathway # attention_report
"""
import os
from collections import Counter

import numpy as np
import torch
from tqdm import tqdm

from iqa_vlm.common import atomic_write_json, atomic_write_jsonl, atomic_write_png, pyplot
from iqa_vlm.data import (LEVEL_PREFIX, LEVELS, answer_prefix_text, closed_set_token_ids, load_image, read_closed_set, to_messages,
                          tokenize_batch)
from iqa_vlm.metrics import closed_set_scores
from iqa_vlm.model import FAMILIES, backbone, eval_device, family_of, get_module, lm_readout, load_evaluated, to_device
from iqa_vlm.studies.two_stage import (CONCLUSION_PREFIX, describe_prompt, eval_records, generate, split_feedback,
                       stage2_record, strip_conclusion)


# ----------------------------------------------------------------------------- the sequence that ends at the quality token
def quality_inputs(model, processor, records, mode, description="generated", max_new_tokens=64, device="cpu"):
    """For the analyses: per record, the rendered text that ends right before the quality level word, so the last
    token's output predicts the level (the "quality token"), as the pipeline of `mode` would see it. -> dicts with
    id, image (or None), text, answer_start (char where the assistant's answer starts), desc_span (chars of the
    description in text), level (the record's), forced (one-stage: no level phrase found, the demo's
    conclusion prefix was appended).
      two_stage: the stage-2 question about the description (text only), answer "The quality of the image is"
      one_stage: the image, the stage-1 question, answer = the feedback up to its level word
    description: 'generated' (the model's own, greedy) or 'reference' (the record's)."""
    if description == "generated":
        texts = []
        for s in range(0, len(records), 16):
            texts += generate(model, processor, [describe_prompt(r) for r in records[s:s + 16]], max_new_tokens, device)
    else:
        texts = [reference_feedback(r, mode) for r in records]
    items = []
    for r, text in zip(records, texts):
        if mode == "two_stage":
            desc = strip_conclusion(text)[0]
            msgs = to_messages(stage2_record(r.get("id"), desc)["conversations"], False)
            full = answer_prefix_text(processor, msgs, LEVEL_PREFIX)
            answer_start = len(full) - len(LEVEL_PREFIX)
            d0 = full.find(desc)
            image, forced = None, False
        else:
            parts = split_feedback(text)
            if parts["level"]:
                prefix, desc_len, forced = text[:parts["level_start"]].rstrip(), parts["conclusion_start"], False
            else:
                prefix, desc_len, forced = (text + " " + CONCLUSION_PREFIX).strip(), len(text), True
            msgs = to_messages(describe_prompt(r)["conversations"], True)
            full = answer_prefix_text(processor, msgs, prefix)
            answer_start = len(full) - len(prefix)
            desc = text[:desc_len].rstrip()
            d0 = answer_start if full.endswith(prefix) else -1
            image = r["image"]
        if d0 < 0:
            raise ValueError(f"record {r.get('id')}: the chat template changed the text, the description is not found "
                             f"in the rendered prompt {full!r}")
        items.append({"id": r.get("id"), "image": image, "text": full, "answer_start": answer_start,
                      "desc_span": (d0, d0 + len(desc)), "description": desc, "level": r.get("level"), "forced": forced})
    return items


def reference_feedback(record, mode):
    """The record's own feedback (one_stage view: the whole answer) or description (mode two_stage)."""
    answer = [t["value"] for t in record["conversations"] if t["from"] == "gpt"]
    if not answer:
        raise ValueError(f"record {record.get('id')}: no answer to take the reference description from")
    return record.get("description", answer[-1]) if mode == "two_stage" else answer[-1]


# ----------------------------------------------------------------------------- two-stage reasoning: the quality token 
# Both analyses look at the "quality token": the last token before the level word (the "is" of "... quality of the
# image is"), whose output is the model's prediction of the level. Inputs come from quality_inputs (above):
#   two_stage: the stage-2 question about the description, text only, then "The quality of the image is"
#   one_stage: the image, the question, and the model's feedback up to its level word
# with the description the model writes itself (--description generated, greedy) or the record's (reference).
def quality_token_setup(ckpt, model, mode, data, split, limit, seed, description, max_new_tokens, eager=False):
    """(model, processor, items, mode, name, data, device) for logit-lens / attention; items: quality_inputs."""
    device, dtype = eval_device()
    vlm, processor, cfg, name = load_evaluated(ckpt, model, device, dtype)
    name = ckpt or name
    mode = mode or ("two_stage" if cfg.get("stage") == 2 else "one_stage")
    records, data = eval_records(data or cfg.get("data") or "data/demo_pathway", split, limit, seed)
    if eager:
        use_eager_attention(vlm)
    print(f"{name}: {mode}, {len(records)} samples of {data} ({split}), {description} descriptions", flush=True)
    with torch.no_grad():
        items = quality_inputs(vlm, processor, records, mode, description, max_new_tokens, device)
    return vlm, processor, items, mode, name, data, device


def encode_item(processor, model, item, device):
    """One quality_inputs item -> model inputs (batch of 1), the image through the processor where there is one."""
    enc = tokenize_batch(processor, [item["text"]], [load_image(item["image"])] if item["image"] else [])
    return to_device(enc, model, device)


def layer_outputs(model, enc):
    """The hidden state after each decoder layer (before the final norm), caught by forward hooks (the model's own
    hidden_states may hold the last one after the norm), and the model's logits."""
    layers = get_module(model, FAMILIES[family_of(model)]["llm_layers"])
    caught = [None] * len(layers)

    def keep(i):
        def hook(module, inputs, output):
            caught[i] = output[0] if isinstance(output, tuple) else output
        return hook
    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
    try:
        logits = model(**enc).logits
    finally:
        for h in handles:
            h.remove()
    return caught, logits


@torch.no_grad()
def logit_lens(model, enc, k):
    """Final norm + LM head on the hidden state of each of the last k decoder layers at the last position.
    -> (layer indices, lens logits [k, V], the model's own logits at that position [V])."""
    norm, head = lm_readout(model)
    hidden, logits = layer_outputs(model, enc)
    picked = list(range(len(hidden)))[-k:]
    lens = torch.stack([head(norm(hidden[i][:, -1]))[0] for i in picked])
    return picked, lens, logits[0, -1]


def logit_lens_png(path, result, focus):
    plt = pyplot()
    layers = result["layers"]
    fig = plt.figure(figsize=(max(7, 3.2 * len(layers)), 7.5))
    grid = fig.add_gridspec(2, len(layers), height_ratios=[1, 1.1])
    ax = fig.add_subplot(grid[0, :])
    bottom = [0.0] * len(layers)
    for j, level in enumerate(LEVELS):
        vals = [result["per_layer"][str(l)]["mean_level_probs"][level] for l in layers]
        ax.bar([f"layer {l}" for l in layers], vals, bottom=bottom, label=level, color=plt.cm.RdYlGn(j / 4))
        bottom = [b + v for b, v in zip(bottom, vals)]
    mass = [result["per_layer"][str(l)]["mean_level_mass_in_vocab"] for l in layers]
    ax.plot([f"layer {l}" for l in layers], mass, "k.--", label="level tokens' share of the whole vocabulary")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean probability")
    ax.set_title(f"logit lens at the quality token ({result['mode']}, {result['n']} samples): closed-set level "
                 f"probabilities per layer", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    for c, l in enumerate(layers):
        ax2 = fig.add_subplot(grid[1, c])
        freq = result["focus"]["token_frequency"][str(l)][:8]
        ax2.barh([t for t, _ in freq][::-1], [n for _, n in freq][::-1], color="C1")
        ax2.set_title(f"layer {l}: top-{result['topk']} tokens,\n{result['focus']['n']} samples predicted {focus!r}", fontsize=8)
        ax2.tick_params(labelsize=7)
    fig.tight_layout()
    atomic_write_png(path, fig)


def logit_lens_report(ckpt=None, model="tiny", mode=None, data=None, split="test", description="generated",
                      max_new_tokens=64, limit=720, seed=0, layers=3, topk=4, focus="poor", out="out/logit_lens"):
    """Logit lens at the quality token : the final norm and the LM head applied to the hidden state of each of
    the last --layers decoder layers, at the last token before the level word. Per sample and layer: the top --topk
    tokens (softmax over the whole vocabulary) and the closed-set probabilities of the five levels; aggregated per
    layer: mean level probabilities, the level tokens' share of the vocabulary, top-1 token counts; and, for the
    samples the model predicts --focus (closed-set argmax at the last layer; default poor, as the paper's Fig. 6), how
    often each token is among the top --topk per layer. At the last layer the lens is the model's own logits.
    Writes OUT/logit_lens.json, OUT/logit_lens_samples.jsonl and OUT/logit_lens.png."""
    if focus not in LEVELS:
        raise SystemExit(f"--focus must be one of {LEVELS}, got {focus!r}")
    n_last = layers
    model, processor, items, mode, name, data, device = quality_token_setup(ckpt, model, mode, data, split, limit, seed, description, max_new_tokens)
    tok = processor.tokenizer
    level_ids = closed_set_token_ids(processor, *read_closed_set(data, expect=LEVELS))
    samples, max_diff = [], 0.0
    for i, item in enumerate(tqdm(items, desc="logit lens", unit="sample")):
        layers, lens, own = logit_lens(model, encode_item(processor, model, item, device), n_last)
        max_diff = max(max_diff, float((lens[-1].float() - own.float()).abs().max()))
        probs = torch.softmax(lens.float(), -1)
        level_probs = closed_set_scores(lens, level_ids)[0]
        top = probs.topk(topk, -1)
        samples.append({"id": item["id"], "level": item["level"], "forced_conclusion": item["forced"],
                        "pred_level": LEVELS[int(level_probs[-1].argmax())],
                        "layers": {str(l): {"top": [[tok.convert_ids_to_tokens(int(t)), round(float(p), 5)]
                                                    for t, p in zip(top.indices[j], top.values[j])],
                                            "level_probs": {lv: round(float(x), 5) for lv, x in zip(LEVELS, level_probs[j])},
                                            "level_mass_in_vocab": round(float(probs[j, level_ids].sum()), 5)}
                                   for j, l in enumerate(layers)}})
    focused = [s for s in samples if s["pred_level"] == focus]
    per_layer = {}
    for l in map(str, layers):
        per_layer[l] = {
            "mean_level_probs": {lv: sum(s["layers"][l]["level_probs"][lv] for s in samples) / len(samples) for lv in LEVELS},
            "argmax_level_counts": dict(Counter(max(LEVELS, key=s["layers"][l]["level_probs"].get) for s in samples)),
            "mean_level_mass_in_vocab": sum(s["layers"][l]["level_mass_in_vocab"] for s in samples) / len(samples),
            "top1_token_counts": Counter(s["layers"][l]["top"][0][0] for s in samples).most_common(10)}
    result = {"what": "logit lens at the quality token: lm_head(final_norm(h)) for the hidden state h after each of the "
                      "last decoder layers, at the last token before the level word",
              "model": name, "mode": mode, "description": description, "data": data, "split": split,
              "n": len(samples), "layers": layers, "topk": topk, "per_layer": per_layer,
              "last_layer_vs_model_logits_max_abs_diff": max_diff,
              "forced_conclusion": sum(s["forced_conclusion"] for s in samples),
              "focus": {"level": focus, "n": len(focused), "ids": [s["id"] for s in focused],
                        "token_frequency": {l: Counter(t for s in focused for t, _ in s["layers"][l]["top"]).most_common(20)
                                            for l in map(str, layers)}}}
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, "logit_lens.json"), result)
    atomic_write_jsonl(os.path.join(out, "logit_lens_samples.jsonl"), samples)
    logit_lens_png(os.path.join(out, "logit_lens.png"), result, focus)
    print(f"logit lens, {mode}, {name}: {len(samples)} samples, layers {layers} (last = the model's logits, max |diff| "
          f"{max_diff:.2e})")
    print(f"{'layer':>6} " + " ".join(f"{lv:>9}" for lv in LEVELS) + f" {'in vocab':>9}  top-1 tokens")
    for l in map(str, layers):
        r = per_layer[l]
        print(f"{l:>6} " + " ".join(f"{r['mean_level_probs'][lv]:>9.3f}" for lv in LEVELS)
              + f" {r['mean_level_mass_in_vocab']:>9.3f}  " + ", ".join(f"{t} {n}" for t, n in r["top1_token_counts"][:4]))
    for l in map(str, layers):
        print(f"predicted {focus!r} ({len(focused)} samples), layer {l}, top-{topk} token frequency: "
              + ", ".join(f"{t} {n}" for t, n in result["focus"]["token_frequency"][l][:8]))
    print(f"-> {out}/logit_lens.json, logit_lens_samples.jsonl, logit_lens.png")
    return result




# attention from the quality token: eager attention (SDPA and flash never form the weights), the query row of the
# last position, averaged over heads, layers and samples; each earlier token is image / prompt / description / conclusion
ATTENTION_PARTS = {"image": "image tokens (the processor's expansion of <image>)",
                   "prompt": "the rest of the user turn and the chat template (system, roles, question)",
                   "description": "the description's tokens (in the user turn for two_stage, in the answer for one_stage)",
                   "conclusion": "the answer after the description up to the quality token itself "
                                 "(e.g. 'Overall, the quality of the image is')"}


def use_eager_attention(model):
    """Attention weights exist only under the eager implementation."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:
        for cfg in (model.config, getattr(model.config, "text_config", None)):
            if cfg is not None:
                cfg._attn_implementation = "eager"


def token_parts(tokenizer, item, input_ids, image_token_id):
    """Which part (ATTENTION_PARTS) each position of the processed ids belongs to. The processed ids are the text's
    tokens with the image token expanded into a run, so the text is tokenized again with character offsets and
    aligned, run for run; a processor that changes the text otherwise is an error."""
    plain = tokenizer(item["text"], return_offsets_mapping=True)
    if "offset_mapping" not in plain:
        raise SystemExit(f"the attention analysis needs character offsets, which {type(tokenizer).__name__} (a slow "
                         f"tokenizer) does not give")
    ids, d0, d1, ans = input_ids.tolist(), *item["desc_span"], item["answer_start"]
    parts, j = [], 0
    bos = tokenizer.bos_token_id
    for tid, (a, b) in zip(plain["input_ids"], plain["offset_mapping"]):
        while j < len(ids) and ids[j] == bos != tid:  # a processor that writes BOS itself: mPLUG-Owl2 at the start,
            parts.append("prompt")                   # InternLM-XComposer2 before every text part
            j += 1
        if tid == image_token_id:
            start = j
            while j < len(ids) and ids[j] == image_token_id:
                j += 1
            if j == start:
                raise ValueError(f"{item['id']}: the processed input has no image tokens where the text has <image>")
            parts += ["image"] * (j - start)
            continue
        if j >= len(ids) or ids[j] != tid:
            raise ValueError(f"{item['id']}: cannot align the processed tokens with the text's (position {j}); "
                             f"the attention analysis expects the processor to only expand the image token")
        parts.append("description" if d1 > d0 and a < d1 and b > d0 else "conclusion" if a >= ans else "prompt")
        j += 1
    if j != len(ids):
        raise ValueError(f"{item['id']}: {len(ids) - j} processed tokens left over after aligning with the text")
    return parts


@torch.no_grad()
def quality_attention(model, enc):
    """Attention of the last position (the quality token) to every position, mean over heads: [layers, T]."""
    out = backbone(model)(**enc, output_attentions=True)
    if not out.attentions or out.attentions[0] is None:
        raise SystemExit("the model returned no attention weights (eager attention could not be set)")
    return torch.stack([a[0, :, -1, :].float().mean(0) for a in out.attentions])


def attention_shares(att, parts):
    """att [layers, T] (rows sum to 1), parts: T names -> {part: [share per layer]}; per layer the shares sum to 1."""
    return {p: [float(att[l, [i for i, q in enumerate(parts) if q == p]].sum()) for l in range(att.shape[0])]
            for p in ATTENTION_PARTS}


def attention_png(path, samples, result):
    plt = pyplot()
    rows = samples[:48]
    width = max(len(s["attention"]) for s in rows)
    heat = np.full((len(rows), width), np.nan)
    kinds = np.full((len(rows), width), np.nan)
    for r, s in enumerate(rows):
        heat[r, :len(s["attention"])] = s["attention"]
        kinds[r, :len(s["attention"])] = [list(ATTENTION_PARTS).index(p) for p in s["parts"]]
    fig, axes = plt.subplots(3, 1, figsize=(10, 9.5), height_ratios=[1.2, 1.2, 1])
    im = axes[0].imshow(np.sqrt(heat), aspect="auto", cmap="magma", interpolation="nearest")
    axes[0].set_title(f"attention from the quality token, mean over heads and layers ({result['mode']}; sqrt scale; "
                      f"one row per sample)", fontsize=9)
    axes[0].set_ylabel("sample")
    fig.colorbar(im, ax=axes[0], label="sqrt(attention)")
    from matplotlib.colors import ListedColormap
    cmap = ListedColormap(["C0", "0.75", "C2", "C3"])
    axes[1].imshow(kinds, aspect="auto", cmap=cmap, vmin=-0.5, vmax=3.5, interpolation="nearest")
    axes[1].set_title("token parts: " + ", ".join(f"{p} ({c})" for p, c in zip(ATTENTION_PARTS, ["blue", "grey", "green", "red"])),
                      fontsize=9)
    axes[1].set_xlabel("token position")
    axes[1].set_ylabel("sample")
    layers = [f"layer {l}" for l in range(len(result["per_layer"]["image"]))] + ["mean"]
    bottom = np.zeros(len(layers))
    for p, c in zip(ATTENTION_PARTS, ["C0", "0.75", "C2", "C3"]):
        vals = np.array(result["per_layer"][p] + [result["shares"][p]])
        axes[2].bar(layers, vals, bottom=bottom, color=c, label=f"{p} {100 * result['shares'][p]:.1f}%")
        bottom += vals
    axes[2].set_ylabel("share of attention")
    axes[2].set_ylim(0, 1)
    axes[2].legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    atomic_write_png(path, fig)


def attention_report(ckpt=None, model="tiny", mode=None, data=None, split="test", description="generated",
                     max_new_tokens=64, limit=720, seed=0, out="out/attention"):
    """Attention from the quality token : with eager attention, the query row of the last token before the
    level word, averaged over heads; its share on image tokens, prompt tokens, description tokens and the conclusion
    so far, per layer and over layers, averaged over samples. In two_stage mode there is no image (stage 2 is text
    only): its share is 0 by construction. Writes OUT/attention.json, OUT/attention_samples.jsonl (per sample: the
    mean attention over positions and each position's part) and OUT/attention.png (heat map over token positions, the
    parts, the shares per layer)."""
    model, processor, items, mode, name, data, device = quality_token_setup(ckpt, model, mode, data, split, limit, seed, description, max_new_tokens, eager=True)
    image_token_id = getattr(model.config, "image_token_id", getattr(model.config, "image_token_index", None))
    samples = []
    for i, item in enumerate(tqdm(items, desc="attention", unit="sample")):
        enc = encode_item(processor, model, item, device)
        att = quality_attention(model, enc)
        parts = token_parts(processor.tokenizer, item, enc["input_ids"][0], image_token_id)
        shares = attention_shares(att, parts)
        samples.append({"id": item["id"], "level": item["level"], "forced_conclusion": item["forced"],
                        "tokens": {p: parts.count(p) for p in ATTENTION_PARTS},
                        "shares": {p: sum(v) / len(v) for p, v in shares.items()}, "per_layer": shares,
                        "attention": [round(float(x), 5) for x in att.mean(0)], "parts": parts})
    n_layers = len(samples[0]["per_layer"]["image"])
    result = {"what": "attention from the quality token (the last token before the level word) to every earlier token; "
                      "eager attention, mean over heads, then layers, then samples", "parts": ATTENTION_PARTS,
              "model": name, "mode": mode, "description": description, "data": data, "split": split,
              "n": len(samples), "forced_conclusion": sum(s["forced_conclusion"] for s in samples),
              "shares": {p: sum(s["shares"][p] for s in samples) / len(samples) for p in ATTENTION_PARTS},
              "per_layer": {p: [sum(s["per_layer"][p][l] for s in samples) / len(samples) for l in range(n_layers)]
                            for p in ATTENTION_PARTS},
              "mean_tokens": {p: sum(s["tokens"][p] for s in samples) / len(samples) for p in ATTENTION_PARTS}}
    result["shares_sum"] = sum(result["shares"].values())
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, "attention.json"), result)
    atomic_write_jsonl(os.path.join(out, "attention_samples.jsonl"),
                       [{k: v for k, v in s.items() if k != "per_layer"} for s in samples])
    attention_png(os.path.join(out, "attention.png"), samples, result)
    print(f"attention from the quality token, {mode}, {name}: {len(samples)} samples, {n_layers} layers")
    print(f"{'':>12}" + "".join(f"{p:>13}" for p in ATTENTION_PARTS))
    print(f"{'tokens':>12}" + "".join(f"{result['mean_tokens'][p]:>13.1f}" for p in ATTENTION_PARTS))
    for l in range(n_layers):
        print(f"{'layer ' + str(l):>12}" + "".join(f"{100 * result['per_layer'][p][l]:>12.1f}%" for p in ATTENTION_PARTS))
    print(f"{'all layers':>12}" + "".join(f"{100 * result['shares'][p]:>12.1f}%" for p in ATTENTION_PARTS)
          + f"   (sum {result['shares_sum']:.4f})")
    print(f"-> {out}/attention.json, attention_samples.jsonl, attention.png")
    return result




