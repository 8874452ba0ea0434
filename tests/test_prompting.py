"""Prompting study (prompting.py, evaluate.py prompting) and difficult-sample selection (hard_samples.py, analyze.py
hard-samples).
CPU only, a few seconds.

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_prompting.py
"""
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

import analyze
import evaluate
from iqa_vlm.studies import hard_samples as H
from iqa_vlm.studies import prompting as P


# ============================================================================ prompts of the nine systems
EXAMPLE = {"paths": ["ex1.png", "ex2.png", "ex3.png", "ex4.png"], "ref_path": None}
QUERY = ["q1.png", "q2.png", "q3.png", "q4.png"]

SINGLE_TASK = "Rate the perceptual quality of image {a} with a score from 0 to 100, where 0 is the worst and 100 the best."
DOUBLE_TASK = ("Compare the perceptual quality of image {a} and image {b}: answer 1 if image {a} is better, "
               "0 if image {b} is better, 2 if they look the same.")
MULTIPLE_TASK = ("Rank the perceptual quality of images {a}, {b}, {c} and {d}: give one number per image in this order, "
                 "from 0 for the lowest quality to 3 for the highest; images of equal quality get the same number.")
COT = ("First describe the perceptual quality of {imgs}: sharpness, noise, colors, contrast, artifacts. "
       "Then write a last line that starts with Answer, followed by {form}.")
EXPECTED = {
    ("single", "standard"): "Image 1:<image>\n" + SINGLE_TASK.format(a=1) + "\nAnswer with the score only.",
    ("single", "cot"): "Image 1:<image>\n" + SINGLE_TASK.format(a=1) + "\n" + COT.format(imgs="image 1", form="the score"),
    ("single", "icl"): "Here is an example with the human answer.\nImage 1:<image>\n" + SINGLE_TASK.format(a=1)
                       + "\nAnswer: 73\nNow your question.\nImage 2:<image>\n" + SINGLE_TASK.format(a=2)
                       + "\nAnswer with the score only.",
    ("double", "standard"): "Image 1:<image>\nImage 2:<image>\n" + DOUBLE_TASK.format(a=1, b=2) + "\nAnswer with 1, 0 or 2 only.",
    ("double", "cot"): "Image 1:<image>\nImage 2:<image>\n" + DOUBLE_TASK.format(a=1, b=2) + "\n"
                       + COT.format(imgs="images 1 and 2", form="1, 0 or 2"),
    ("double", "icl"): "Here is an example with the human answer.\nImage 1:<image>\nImage 2:<image>\n"
                       + DOUBLE_TASK.format(a=1, b=2) + "\nAnswer: 0\nNow your question.\nImage 3:<image>\nImage 4:<image>\n"
                       + DOUBLE_TASK.format(a=3, b=4) + "\nAnswer with 1, 0 or 2 only.",
    ("multiple", "standard"): "Image 1:<image>\nImage 2:<image>\nImage 3:<image>\nImage 4:<image>\n"
                              + MULTIPLE_TASK.format(a=1, b=2, c=3, d=4) + "\nAnswer with the four numbers, separated by commas only.",
    ("multiple", "cot"): "Image 1:<image>\nImage 2:<image>\nImage 3:<image>\nImage 4:<image>\n"
                         + MULTIPLE_TASK.format(a=1, b=2, c=3, d=4) + "\n"
                         + COT.format(imgs="images 1, 2, 3 and 4", form="the four numbers, separated by commas"),
    ("multiple", "icl"): "Here is an example with the human answer.\n"
                         + "".join(f"Image {k}:<image>\n" for k in range(1, 5)) + MULTIPLE_TASK.format(a=1, b=2, c=3, d=4)
                         + "\nAnswer: 2, 3, 3, 0\nNow your question.\n" + "".join(f"Image {k}:<image>\n" for k in range(5, 9))
                         + MULTIPLE_TASK.format(a=5, b=6, c=7, d=8) + "\nAnswer with the four numbers, separated by commas only.",
}
ANSWERS = {"single": "73", "double": "0", "multiple": "2, 3, 3, 0"}


@pytest.mark.parametrize("protocol,prompting", sorted(EXPECTED))
def test_prompt_of_each_system(protocol, prompting):
    k = P.N_IMAGES[protocol]
    example = {**EXAMPLE, "paths": EXAMPLE["paths"][:k], "answer": ANSWERS[protocol]}
    content, images, idx = P.build_prompt(protocol, prompting, QUERY[:k], None, example, prompt_set="plain")
    assert P.content_text(content) == EXPECTED[(protocol, prompting)]
    shown = (EXAMPLE["paths"][:k] if prompting == "icl" else []) + QUERY[:k]
    assert images == shown and sum(c["type"] == "image" for c in content) == len(shown)
    assert idx == list(range(len(shown) - k + 1, len(shown) + 1))  # positions of the judged images


def test_full_reference_prompts_show_the_reference_first():
    content, images, idx = P.build_prompt("double", "icl", ["q1", "q2"], "qref",
                                          {"paths": ["e1", "e2"], "ref_path": "eref", "answer": "1"}, prompt_set="plain")
    assert images == ["eref", "e1", "e2", "qref", "q1", "q2"] and idx == [5, 6]
    text = P.content_text(content)
    assert ("Compare the perceptual quality of image 5 and image 6, two distorted versions of the reference image 4: "
            "answer 1 if image 5 is better, 0 if image 6 is better, 2 if they look the same.") in text
    assert "image 2 and image 3, two distorted versions of the reference image 1:" in text
    content, images, idx = P.build_prompt("single", "standard", ["q1"], "qref", prompt_set="plain")
    assert images == ["qref", "q1"] and idx == [2]
    assert P.content_text(content) == ("Image 1:<image>\nImage 2:<image>\nRate the perceptual quality of image 2, compared "
                                      "with the reference image 1, with a score from 0 to 100, where 0 is the worst and "
                                      "100 the best.\nAnswer with the score only.")
    _, images, idx = P.build_prompt("multiple", "cot", QUERY, "qref", prompt_set="plain")
    assert images == ["qref"] + QUERY and idx == [2, 3, 4, 5]


# the sentences the paper prints for the nine NR systems, "[...]" filled with the authors' attribute list
PRINTED = {
    ("single", "standard"): ["please assign a perceptual quality score in terms of {A}.", "The score must range from 0 to 100, with a higher score denoting better image quality."],
    ("double", "standard"): ["please assign a perceptual quality comparison result between the two images in terms of {A}.",
                             "If you judge that the first image has better quality than the second image, output 1, if you judge that the second image has better quality than the first image, output 0, if you judge that two images have the same quality, output 2."],
    ("multiple", "standard"): ["please assign a perceptual quality ranking result among four images in terms of {A}.",
                               "The image with the lowest perceptual quality is ranked 0, and the image with the highest perceptual quality is ranked 3. If you judge that some distorted images have the same perceptual quality, their ranking can be the same."],
    ("single", "cot"): ["please first detail its perceptual quality in terms of {A}.", "Then, based on the perceptual analysis of the given image, assign a quality score to the given image. The score must range from 0 to 100, with a higher score denoting better image quality."],
    ("double", "cot"): ["please first detail their perceptual quality comparison in terms of {A}.", "Then, based on the quality comparison analysis between them, assign a perceptual quality comparison result between the two images. If you judge that the first image has better quality than the second image, output 1, if you judge that the second image has better quality than the first image, output 0, if you judge that two images have the same quality, output 2."],
    ("multiple", "cot"): ["please first detail their perceptual quality comparison in terms of {A}.", "Then, based on the quality comparison analysis among them, please assign a perceptual quality ranking result among four images. The image with the lowest perceptual quality is ranked 0, and the image with the highest perceptual quality is ranked 3. If you judge that some distorted images have the same perceptual quality, their ranking can be the same."],
    ("single", "icl"): ["For the shown two images, the human perceptual quality score of the first image is 50. Now, based on the above example, please assign a perceptual quality score to the second image in terms of {A}. The score must range from 0 to 100, with a higher score denoting better image quality."],
    ("double", "icl"): ["for the first two images (the first and the second images), the human perceptual quality comparison result is that the first image is of better quality than the second image. Now, based on the above example, please assign a perceptual quality comparison result between the second two images (the third and the fourth images) in terms of {A}. If you judge that the third image has better quality than the fourth image, output 1, if you judge that the fourth image has better quality than the third image, output 0, if you judge that two images have the same quality, output 2."],
    ("multiple", "icl"): ["For the shown eight images, for the first four images (from the first to the fourth images), the human perceptual quality ranking result is [first: 0, second: 1, third: 2, fourth: 3]. Now, based on the above example, please assign a perceptual quality ranking result among the second four images (from the fifth to the eighth images) in terms of {A}. The image with the lowest perceptual quality is ranked 0, and the image with the highest perceptual quality is ranked 3. If you judge that some distorted images have the same perceptual quality, their ranking can be the same."]}


@pytest.mark.parametrize("protocol,prompting", sorted(PRINTED))
def test_paper_prompts_hold_the_printed_sentences(protocol, prompting):
    from iqa_vlm.studies.prompting_paper import ATTRIBUTES, CLOSING
    k = P.N_IMAGES[protocol]
    example = {"paths": EXAMPLE["paths"][:k], "ref_path": None}
    content, images, idx = P.build_prompt(protocol, prompting, QUERY[:k], None, example if prompting == "icl" else None)
    text = content[0]["text"]
    for sentence in PRINTED[(protocol, prompting)]:
        assert sentence.replace("{A}", ATTRIBUTES) in text
    assert text.endswith(CLOSING) and [c["type"] for c in content] == ["text"] + ["image"] * len(images)
    assert images == (EXAMPLE["paths"][:k] if prompting == "icl" else []) + QUERY[:k] and idx[-1] == len(images)
    # FR: the reference first, then its distorted images; the icl example's pair ahead of the query's
    content, images, idx = P.build_prompt(protocol, prompting, QUERY[:k], "qref", {**example, "ref_path": "eref"})
    assert content[0]["text"].startswith(f"For the shown {['two', 'three', 'four', 'five', 'six', 'eight', 'ten'][[2, 3, 4, 5, 6, 8, 10].index(len(images))]} images")
    assert images == ((["eref"] + EXAMPLE["paths"][:k]) if prompting == "icl" else []) + ["qref"] + QUERY[:k]


def test_paper_answers_are_read_as_the_authors_read_them():
    assert P.parse_paper("single", "Description: sharp. Score: 73.5") == 73.5
    assert P.parse_paper("single", "score 73") is None and P.parse_paper("single", "Score: 70 or 80") is None
    assert P.parse_paper("double", "Score: 1") == 1 and P.parse_paper("double", "Score: 1. Score: 0") == 1
    assert P.parse_paper("double", "Score: 3") == 3 and P.to_pairs("double", ["a", "b"], 3) == []  # read, no comparison
    assert P.parse_paper("multiple", "Score: [first: 0, second: 3, third: 2, fourth: 1]") == [0, 3, 2, 1]
    assert P.parse_paper("multiple", "Score: [first: 0, second: 3]") is None


def test_tiny_model_takes_several_images_in_one_prompt():
    """Every word of the plain prompts is in the tiny vocabulary, and the 10 images of FR multiple icl all become image
    tokens (the paper's prompts hold words the tiny model lacks: <unk>, as a real model would read a foreign word)."""
    from iqa_vlm.tiny_models import build_tiny_processor
    processor = build_tiny_processor()
    P.check_multi_image(processor, 10, "tiny")
    img = Image.new("RGB", (64, 64), (10, 200, 30))
    for protocol in P.N_IMAGES:
        for prompting in P.PROMPTINGS:
            k = P.N_IMAGES[protocol]
            content, images, _ = P.build_prompt(protocol, prompting, QUERY[:k], "ref",
                                                {"paths": EXAMPLE["paths"][:k], "ref_path": "eref", "answer": ANSWERS[protocol]},
                                                prompt_set="plain")
            text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
            enc = processor(text=[text], images=[[img] * len(images)], return_tensors="pt")
            assert processor.tokenizer.unk_token_id not in enc["input_ids"][0].tolist(), (protocol, prompting)
            assert int((enc["input_ids"] == processor.image_token_id).sum()) == 64 * len(images)
            assert enc["pixel_values"].shape[0] == len(images)


def test_a_single_image_processor_gets_a_clear_error():
    class OneImage:  # a chat template that keeps only the first image
        image_token_id = 7

        def apply_chat_template(self, messages, **kw):
            return "x"

        def __call__(self, text, images, return_tensors):
            import torch
            return {"input_ids": torch.tensor([[7, 7, 1]])}

    with pytest.raises(ValueError, match="keeps only one image"):
        P.check_multi_image(OneImage(), 3, "one-image-model")

    class Refuses(OneImage):
        def __call__(self, text, images, return_tensors):
            if len(images[0]) > 1:
                raise ValueError("only one image per prompt")
            return super().__call__(text, images, return_tensors)

    with pytest.raises(ValueError, match="cannot take 2 images in one prompt"):
        P.check_multi_image(Refuses(), 2, "refusing-model")


# ============================================================================ parsing messy answers
SINGLE_ANSWERS = [("73", 73), ("Score: 73/100", 73), ("I'd say 85.", 85), ("The quality score is 62 out of 100.", 62),
                  ("I would rate it 7/10", 70), ("Image 1 looks sharp. Score: 40", 40), ("Rating : 55 / 100", 55),
                  ("The image is blurry and noisy, with 3 visible artifacts.\nAnswer: 35.", 35), ("score 0.5 / 1", 50),
                  ("no idea", None), ("150", None), ("somewhere between 60 and 70", None), ("", None)]
DOUBLE_ANSWERS = [("1", 1), ("Answer: 0", 0), ("2", 2), ("2.", 2), ("Image 2 is better.", 0), ("The first image is better.", 1),
                  ("The second one looks better", 0), ("They look the same.", 2), ("Both have the same quality. Answer: 2", 2),
                  ("Image 1 is blurry, image 2 is sharp.\nAnswer: 0.", 0), ("Compared to the first image, the second is better", 0),
                  ("the second image is worse than the first", 1), ("1 or 0", None), ("banana", None)]
MULTIPLE_ANSWERS = [("2, 3, 3, 0", [2, 3, 3, 0]), ("Answer: 1, 0, 3, 2.", [1, 0, 3, 2]), ("The ranking is [3, 2, 1, 0]", [3, 2, 1, 0]),
                    ("Image 1: 2, image 2: 3, image 3: 3, image 4: 0", [2, 3, 3, 0]),
                    ("First: 2, second: 3, third: 3, fourth: 0", [2, 3, 3, 0]),
                    ("Images 1, 2, 3 and 4 show 4 levels of blur.\nAnswer: 0 1 2 3", [0, 1, 2, 3]),
                    ("2, 3", None), ("5, 3, 3, 0", None), ("3 2 3 3 0", None), ("all the same", None)]


@pytest.mark.parametrize("text,expected", SINGLE_ANSWERS)
def test_parse_single(text, expected):
    assert P.parse_single(text) == expected


@pytest.mark.parametrize("text,expected", DOUBLE_ANSWERS)
def test_parse_double(text, expected):
    assert P.parse_double(text, (1, 2)) == expected


def test_parse_double_names_images_by_their_position():
    assert P.parse_double("Image 6 is better than image 5.", (5, 6)) == 0  # icl: the query's images are 5 and 6
    assert P.parse_double("image 5 looks better", (5, 6)) == 1
    assert P.parse_double("Answer: image 3 is worse", (3, 4)) == 0


@pytest.mark.parametrize("text,expected", MULTIPLE_ANSWERS)
def test_parse_multiple(text, expected):
    assert P.parse_multiple(text) == expected


# ============================================================================ from answers to scores
def test_ranking_to_pairs_with_ties():
    pairs = P.to_pairs("multiple", ["a", "b", "c", "d"], [2, 3, 3, 0])
    assert pairs == [("a", "b", 0.0), ("a", "c", 0.0), ("a", "d", 1.0), ("b", "c", 0.5), ("b", "d", 1.0), ("c", "d", 1.0)]
    assert P.to_pairs("double", ["a", "b"], 2) == [("a", "b", 0.5)] and P.to_pairs("double", ["a", "b"], None) == []


def test_bradley_terry_known_results():
    # a beats b 3 times, b beats a once: the MLE has p_a / p_b = 3 exactly
    s = P.bradley_terry([("a", "b", 1)] * 3 + [("a", "b", 0)], prior=0)
    assert s["a"] - s["b"] == pytest.approx(math.log(3), abs=1e-8) and s["a"] + s["b"] == pytest.approx(0, abs=1e-8)
    # ties are half a win: 2 wins, 2 ties, 1 loss -> 3 wins of 5 for a, 2 for b -> ratio 3 / 2
    s = P.bradley_terry([("a", "b", 1)] * 2 + [("a", "b", 0.5)] * 2 + [("b", "a", 1)], prior=0)
    assert s["a"] - s["b"] == pytest.approx(math.log(1.5), abs=1e-8)
    # one ranking of four (a > b = c > d) through its pairs: the order comes back, b and c tie exactly
    s = P.bradley_terry(P.to_pairs("multiple", ["a", "b", "c", "d"], [3, 1, 1, 0]))
    assert s["a"] > s["b"] and s["b"] == pytest.approx(s["c"], abs=1e-9) and s["c"] > s["d"]
    # the prior keeps an item that won everything finite; with it, one win + one virtual tie vs strength 1:
    # p = (1 + 0.5) / (1/(p+q) + 1/(p+1)), q = (0 + 0.5) / (1/(p+q) + 1/(q+1)); check the fixed point
    s = P.bradley_terry([("a", "b", 1)], prior=1)
    p, q = math.exp(s["a"]), math.exp(s["b"])
    assert p == pytest.approx(1.5 / (1 / (p + q) + 1 / (p + 1))) and q == pytest.approx(0.5 / (1 / (p + q) + 1 / (q + 1)))
    assert p * q == pytest.approx(1)  # symmetric: a is as far above the virtual item as b is below
    with pytest.raises(ValueError, match="won and lost"):
        P.bradley_terry([("a", "b", 1)], prior=0)


def test_scripted_preferences_recover_the_mos_order():
    """Answers that always follow the MOS (double: every pair; multiple: rankings of quadruples) -> SRCC 1; the
    reversed answers -> SRCC -1; an unparsed answer adds no pair."""
    mos = [0.1, 0.5, 0.3, 0.9, 0.7, 0.2]
    ids = [f"i{k}" for k in range(len(mos))]
    truth = [("i%d" % a, "i%d" % b, 1.0 if mos[a] > mos[b] else 0.0) for a in range(6) for b in range(a + 1, 6)]
    for pairs, expected in ((truth, 1.0), ([(a, b, 1 - s) for a, b, s in truth], -1.0)):
        s = P.bradley_terry(pairs + P.to_pairs("double", ["i0", "i1"], None))
        per_image = [{"source": "x", "score": s[i], "target": m} for i, m in zip(ids, mos)]
        m = P.correlations(per_image)["x"]
        assert (m["n_images"], m["n_scored"], m["srcc"]) == (6, 6, pytest.approx(expected))
        C, items = P.comparison_counts(pairs)  # Thurstone MAP on the same answers: the same order
        t = dict(zip(items, P.thurstone_map(C)))
        assert P.correlations([{"source": "x", "score": t[i], "target": m} for i, m in zip(ids, mos)])["x"]["srcc"] == pytest.approx(expected)
    quads = [[0, 1, 2, 3], [2, 3, 4, 5], [0, 1, 4, 5]]
    pairs = [p for q in quads for p in P.to_pairs("multiple", [ids[k] for k in q],
                                                 [int(x) for x in P.human_answer("multiple", [mos[k] for k in q]).split(", ")])]
    s = P.bradley_terry(pairs)
    assert P.correlations([{"source": "x", "score": s[i], "target": m} for i, m in zip(ids, mos)])["x"]["srcc"] == pytest.approx(1)


def test_human_answer():
    assert P.human_answer("single", [0.734]) == "73"
    assert [P.human_answer("double", t) for t in ([0.8, 0.2], [0.2, 0.8], [0.5, 0.5])] == ["1", "0", "2"]
    assert P.human_answer("multiple", [0.5, 0.9, 0.9, 0.1]) == "1, 2, 2, 0"


def records_for_sampling():
    return [{"id": f"{s}/{k}", "source": s, "ref_image": f"/r/{s}{k % 2}.png", "mos": k} for s in ("x", "y") for k in range(9)]


def test_queries_are_reproducible_and_cover_every_image():
    """As the authors draw them: each image anchors `rounds` queries, itself first, partners from its group."""
    recs = records_for_sampling()
    q, _ = P.sample_queries(recs, "double", False, 5, seed=0)
    assert len(q) == 5 * len(recs) and [t[0] for t in q] == [i for i in range(len(recs)) for _ in range(5)]
    for protocol, rounds in (("double", 4), ("multiple", 2)):
        q1, skipped = P.sample_queries(recs, protocol, False, rounds, seed=3)
        assert q1 == P.sample_queries(recs, protocol, False, rounds, seed=3)[0] != P.sample_queries(recs, protocol, False, rounds, seed=4)[0]
        assert skipped == 0 and all(len(set(q)) == P.N_IMAGES[protocol] for q in q1)
        assert all(len({recs[i]["source"] for i in q}) == 1 for q in q1)  # NR: within a source
        count = np.bincount([i for q in q1 for i in q], minlength=len(recs))
        assert count.min() >= rounds
    # FR: within one reference image; groups of 4 and 5 images: too small for nothing, double and multiple both form
    q, skipped = P.sample_queries(recs, "multiple", True, 1, seed=0)
    assert skipped == 0 and all(len({recs[i]["ref_image"] for i in t}) == 1 for t in q)
    q, skipped = P.sample_queries(recs[:3], "multiple", True, 1, seed=0)
    assert q == [] and skipped == 3


# ============================================================================ difficult samples
def test_greedy_selection_hand_computed():
    # errors 5, 4.5, 1, 3; 1-D features 0, 0.1, 1.0, 0.4; lambda 4.
    # pick 1: Div = 0 for all -> argmax error -> sample 0.
    # pick 2: Div to {0} = 0.1, 1.0, 0.4 -> 4.5 + 0.4 = 4.9, 1 + 4 = 5.0, 3 + 1.6 = 4.6 -> sample 2 (far, though easy).
    # pick 3: Div to {0, 2} = 0.1, 0.4 -> 4.9, 4.6 -> sample 1; then 3, whose Div to {0, 2, 1} is |0.4 - 0.1| = 0.3.
    error, feats = [5, 4.5, 1, 3], [[0.0], [0.1], [1.0], [0.4]]
    picks = H.greedy_select(error, feats, 4, lam=4, div="nearest_rms")
    assert [k for k, _, _ in picks] == [0, 2, 1, 3]
    assert [d for _, _, d in picks] == pytest.approx([0, 1.0, 0.1, 0.3])
    assert [k for k, _, _ in H.greedy_select(error, feats, 4, lam=0)] == [0, 1, 3, 2]  # error alone
    assert H.difficulty([0.6, 0.5], [0.2, 0.5], [0.2, 0.1], eps=0) == pytest.approx([4, 0])


def test_authors_rule_with_cosine_div_hand_computed():
    """Div = 1 - cos(f(x), mean f(picked)), 1 before any pick; ties go to the later sample.
    errors 0.5, 0.5, 0.4; features (1, 0), (1, 0.1), (0, 1); lambda 1.
    pick 1: Div 1 for all -> 1.5, 1.5, 1.4: a tie, the later -> sample 1.
    pick 2: mean f = (1, 0.1): cos to (1, 0) = 1/sqrt(1.01) = 0.99504 -> Div 0.00496 -> 0.50496; to (0, 1) = 0.1/sqrt(1.01)
    = 0.09950 -> Div 0.90050 -> 1.30050: sample 2. pick 3: sample 0."""
    picks = H.greedy_select([0.5, 0.5, 0.4], [[1, 0], [1, 0.1], [0, 1]], 3, lam=1.0)
    assert [k for k, _, _ in picks] == [1, 2, 0]
    # the last pick's Div: mean of (1, 0.1) and (0, 1) = (0.5, 0.55); cos to (1, 0) = 0.5 / sqrt(0.5525)
    assert [d for _, _, d in picks] == pytest.approx([1.0, 1 - 0.1 / math.sqrt(1.01), 1 - 0.5 / math.sqrt(0.5525)], abs=1e-9)
    assert H.difficulty([0.6], [0.2], [0.3]) == pytest.approx([0.16 / 1.09])  # eps 1 by default


def test_fr_two_level_selection_hand_computed():
    # references 0 (samples 0, 1, 2: errors 1, 3, 2, mean 2) and 1 (samples 3, 4: errors 8, 0, mean 4)
    error, group, ref_feats = [1, 3, 2, 8, 0], [0, 0, 0, 1, 1], [[0.0], [1.0]]
    refs, samples = H.select_fr(error, group, ref_feats, n_refs=1, per_ref=1, lam=0)
    assert [g for g, _, _ in refs] == [1] and samples == [3]
    refs, samples = H.select_fr(error, group, ref_feats, n_refs=2, per_ref=2, lam=0)
    assert [g for g, _, _ in refs] == [1, 0] and samples == [3, 4, 1, 2]


def gray(path, value):
    Image.new("RGB", (16, 16), (value, value, value)).save(path)


def test_hard_samples_command_hand_computed(tmp_path):
    """mos 1, 2, 3, 5 -> q = 0, .25, .5, 1; std .4, .2, .6, .4 -> sigma (min-max) .5, 0, 1, .5; q_w: the predictions
    logistic-fitted onto q; errors (q_w - q)^2 / (sigma^2 + 1). Gray images 0, 51, 255, 102 as thumbnails; with the
    cosine Div all four thumbnails point the same way (Div 0 after the first pick) except the black one (norm 0: Div 1)."""
    from iqa_vlm.metrics import fit_logistic, logistic4
    (tmp_path / "images").mkdir()
    recs, preds = [], [1, 0, 0.5, 0.5]
    for k, (mos, std, value) in enumerate(zip([1, 2, 3, 5], [0.4, 0.2, 0.6, 0.4], [0, 51, 255, 102])):
        gray(tmp_path / "images" / f"{k}.png", value)
        recs.append({"id": f"s/{k}", "image": f"images/{k}.png", "conversations": [{"from": "human", "value": "<image>\nq"}],
                     "source": "s", "mos": mos, "std": std})
    with open(tmp_path / "test.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    with open(tmp_path / "pred.jsonl", "w") as f:
        f.writelines(json.dumps({"id": r["id"], "score": p}) + "\n" for r, p in zip(recs, preds))
        f.write(json.dumps({"id": "s/unparsed", "score": None}) + "\n")
    out = tmp_path / "out"
    base = ["hard-samples", "--data", str(tmp_path), "--pred", str(tmp_path / "pred.jsonl"), "--n", "3", "--features",
            "thumbnail", "--out", str(out)]
    res = analyze.main(base)
    q, sigma = np.array([0, .25, .5, 1]), np.array([.5, 0, 1, .5])
    params = fit_logistic(preds, q)
    q_w = logistic4(np.array(preds, dtype=float), *params) if params else np.array(preds, dtype=float)
    error = (q_w - q) ** 2 / (sigma ** 2 + 1)
    assert [p["q"] for p in res["picks"]] == pytest.approx([q[int(i.split("/")[1])] for i in res["selected"]])
    assert [p["error"] for p in res["picks"]] == pytest.approx([error[int(i.split("/")[1])] for i in res["selected"]], abs=1e-6)
    feats = np.stack([H.thumbnail(tmp_path / "images" / f"{k}.png") for k in range(4)])
    assert res["selected"] == [f"s/{k}" for k, _, _ in H.greedy_select(error, feats, 3, 1e-2)]
    assert res["null_predictions"] == 1 and res["lambda"] == 1e-2 and res["eps"] == 1.0 and res["div"] == "cosine"
    assert json.load(open(out / "hard_samples.json"))["selected"] == res["selected"]
    assert (out / "hard_samples.png").read_bytes()[:4] == b"\x89PNG"
    # --feature_norm authors: what the authors' F.normalize(feat, p=2, dim=0) does to a [1, D] feature (each element
    # over itself: its sign), then the same greedy rule; thumbnails are >= 0, so a feature becomes 1s (0 for black)
    import torch
    x = torch.randn(1, 512)
    assert np.array_equal(H.normalise_features(x.numpy(), "authors"), torch.nn.functional.normalize(x, p=2, dim=0).numpy())
    signs = H.normalise_features(feats, "authors")
    assert set(np.unique(signs)) <= {0.0, 1.0}
    res_authors = analyze.main(base + ["--feature_norm", "authors"])
    assert res_authors["selected"] == [f"s/{k}" for k, _, _ in H.greedy_select(error, signs, 3, 1e-2)]
    assert res_authors["feature_norm"] == "authors" and res["feature_norm"] == "none"
    # FR without ref_image: references by (source, ref); all four share one here -> its 2 hardest
    res = analyze.main(base + ["--fr", "true", "--n_refs", "1", "--per_ref", "2"])
    assert res["selected"] == [f"s/{k}" for k in np.argsort(-error, kind="stable")[:2]] and (out / "hard_samples_fr.png").exists()
    with open(tmp_path / "bad.jsonl", "w") as f:
        f.write(json.dumps({"id": "s/0", "prediction": 3}) + "\n")
    with pytest.raises(SystemExit, match="bad.jsonl:1: a prediction row needs 'id' and 'score'"):
        analyze.main(["hard-samples", "--data", str(tmp_path), "--pred", str(tmp_path / "bad.jsonl"), "--out", str(out)])


@pytest.mark.slow
def test_hard_samples_from_expert_metrics_on_fr_data(tmp_path):
    """--experts psnr,ssim: q_w from the FR metrics of each distorted image against its reference (the authors' FR set
    selection), features from a tiny random CLIP vision model saved here (the authors' ViT-B/32 stands in)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    data = tmp_path / "gen"
    make_fr_set(data)
    torch.manual_seed(0)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32,
                                                          num_hidden_layers=1, num_attention_heads=2, projection_dim=8))
    clip.save_pretrained(tmp_path / "clip")
    res = analyze.main(["hard-samples", "--data", str(data), "--experts", "psnr,ssim", "--fr", "true", "--n_refs", "2",
                        "--per_ref", "2", "--features", f"clip:{tmp_path / 'clip'}", "--out", str(tmp_path / "o")])
    assert len(res["references"]) == 2 and len(res["selected"]) == 4 and res["experts"] == "psnr,ssim"
    assert all(0 <= p["q_w"] <= 1.2 for p in res["picks"])


# ============================================================================ end to end with the tiny model
def make_fr_set(root):
    """Two test references and one train reference, each with 4 distorted versions (noise of rising strength)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    splits = {"test": ["r0", "r1"], "train": ["r2"]}
    for split, refs in splits.items():
        rows = []
        for ref in refs:
            base = rng.uniform(0, 1, (8, 8, 3)).repeat(8, 0).repeat(8, 1)
            Image.fromarray((base * 255).astype(np.uint8)).save(root / "images" / f"{ref}.png")
            for k in range(4):
                noisy = np.clip(base + rng.normal(0, 0.1 * k, base.shape), 0, 1)
                Image.fromarray((noisy * 255).astype(np.uint8)).save(root / "images" / f"{ref}_{k}.png")
                mos = 5 - k + 0.1 * rng.random()
                rows.append({"id": f"gen/{ref}_{k}", "image": f"images/{ref}_{k}.png", "ref_image": f"images/{ref}.png",
                             "conversations": [{"from": "human", "value": "<image>\nq"}], "source": "gen", "ref": ref,
                             "mos": mos, "mos_norm": (mos - 1) / 4, "std": 0.3})
        with open(root / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


def test_end_to_end_with_the_tiny_model(tmp_path):
    data, out = tmp_path / "gen", tmp_path / "out"
    make_fr_set(data)
    res = evaluate.main(["prompting", "--model", "tiny", "--data", str(data), "--protocol", "multiple", "--prompting", "icl",
                         "--reference", "true", "--max_new_tokens", "8", "--batch_size", "2", "--out", str(out)])
    # 2 references x 4 images, each anchoring 2 quadruples -> 16; each prompt: example ref + 4, query ref + 4
    assert res["n_queries"] == 16 and res["parsed"] + res["unparsed"] == 16 and res["images_per_prompt"] == 10
    assert res["example"]["ids"][0].startswith("gen/r2_") and res["example"]["ref_path"].endswith("r2.png")
    rows = [json.loads(l) for l in open(out / "answers_prompting_multiple_icl_fr.jsonl")]
    assert len(rows) == 16 and all(len(r["images"]) == 10 and isinstance(r["answer"], str) for r in rows)
    for r in rows:  # the query's reference sits at position 6, its own images after it
        ref = r["images"][5]
        assert all(os.path.basename(p).startswith(os.path.basename(ref)[:-4] + "_") for p in r["images"][6:])
    scores = [json.loads(l) for l in open(out / "scores_prompting_multiple_icl_fr.jsonl")]
    assert len(scores) == 8 and {"id", "score", "mos"} <= set(scores[0])
    saved = json.load(open(out / "eval_prompting_multiple_icl_fr.json"))
    assert saved["per_source"]["gen"]["n_images"] == 8 and "Thurstone" in saved["aggregation"]
    assert "srcc_per_ref" in saved["per_source"]["gen"] and saved["prompts"] == "paper"
    # NR single stimulus through the same door; its per-image scores feed hard-samples
    res = evaluate.main(["prompting", "--model", "tiny", "--data", str(data), "--protocol", "single", "--max_new_tokens", "6", "--out", str(out)])
    assert res["n_queries"] == 8 and res["parsed"] + res["unparsed"] == 8
    preds, null = H.read_predictions(out / "scores_prompting_single_standard.jsonl")
    assert len(preds) == 8 and null == 0  # unparsed answers replaced by seeded random scores (the authors' fallback)
    res = evaluate.main(["prompting", "--model", "tiny", "--data", str(data), "--protocol", "single", "--max_new_tokens", "6",
                         "--unparsed", "drop", "--out", str(out)])
    preds, null = H.read_predictions(out / "scores_prompting_single_standard.jsonl")
    assert len(preds) == res["parsed"] and null == res["unparsed"]


def test_full_reference_without_ref_image_is_a_clear_error(tmp_path):
    data = tmp_path / "gen"
    make_fr_set(data)
    rows = [json.loads(l) for l in open(data / "test.jsonl")]
    with open(data / "test.jsonl", "w") as f:
        f.writelines(json.dumps({k: v for k, v in r.items() if k != "ref_image"}) + "\n" for r in rows)
    with pytest.raises(SystemExit, match="no 'ref_image' field"):
        evaluate.main(["prompting", "--model", "tiny", "--data", str(data), "--protocol", "double", "--reference", "true", "--out", str(tmp_path / "o")])


def test_prepare_data_writes_ref_image(tmp_path):
    """Readers know each distorted image's reference; the records carry its path as ref_image."""
    import prepare_data
    from test_datasets import make_tid
    make_tid(tmp_path / "tid")
    prepare_data.main(["--task", "score", "--tid2013", str(tmp_path / "tid"), "--out", str(tmp_path / "score"),
                       "--test_frac", "0.5", "--val_frac", "0"])
    recs = [json.loads(l) for s in ("train", "test") for l in open(tmp_path / "score" / f"{s}.jsonl")]
    assert recs and all(os.path.basename(r["ref_image"]).lower() == r["ref"].lower() + ".bmp" for r in recs)
    assert all(os.path.isfile(r["ref_image"]) for r in recs)


@pytest.mark.slow
def test_prompting_table_on_the_tiny_model(tmp_path):
    """All nine systems, NR and FR, in Table 1's shape with the paper's rows beside; the FR expert rows measured."""
    data = tmp_path / "gen"
    make_fr_set(data)
    res = evaluate.main(["prompting-table", "--model", "tiny", "--data", str(data), "--fr_data", str(data), "--limit", "8",
                         "--max_new_tokens", "4", "--out", str(tmp_path / "t")])
    assert len(res["systems"]) == 18 and {"psnr", "ssim", "ms_ssim"} == set(res["experts"])
    # noise of rising strength: PSNR and SSIM follow the MOS within each reference
    assert res["experts"]["psnr"]["gen"]["srcc_per_ref"] == pytest.approx(1.0)
    assert res["experts"]["ms_ssim"]["gen"]["n_scored"] == 0  # 64 x 64 images: too small for five scales
    assert json.load(open(tmp_path / "t" / "prompting_table.json"))["paper_table1"]["single"]["GPT-4V"]["cot"][0] == 0.809


def test_thurstone_map_hand_solved_and_known_order():
    """3 items: item 0 beats 1 and 2 once each, 1 and 2 tie once. By symmetry s1 = s2 = -s0 / 2 = -a / 2, and the MAP
    objective -2 log Phi(1.5 a) + 0.75 a^2 is least where a = 2 phi(1.5 a) / Phi(1.5 a): solved here by bisection."""
    from scipy.stats import norm
    from iqa_vlm.pairwise import comparison_counts, thurstone_map
    C, items = comparison_counts([("a", "b", 1.0), ("a", "c", 1.0), ("b", "c", 0.5)], ["a", "b", "c"])
    assert C.tolist() == [[0, 1, 1], [0, 0, 1], [0, 1, 0]]
    lo, hi = 0.0, 5.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid < 2 * norm.pdf(1.5 * mid) / norm.cdf(1.5 * mid) else (lo, mid)
    s = thurstone_map(C, scale=False)
    assert s == pytest.approx([lo, -lo / 2, -lo / 2], abs=1e-5) and s.sum() == pytest.approx(0, abs=1e-9)
    assert thurstone_map(C).tolist() == pytest.approx([100, 0, 0], abs=1e-4)
    # scripted comparisons along a known order (each pair judged 3 times by its true order, once against): recovered
    rng = np.random.default_rng(0)
    order = rng.permutation(8)
    pairs = [(int(i), int(j), float(order[i] > order[j]) if t < 3 else float(order[i] < order[j]))
             for i in range(8) for j in range(i + 1, 8) for t in range(4)]
    C, items = comparison_counts(pairs, list(range(8)))
    assert np.argsort(thurstone_map(C)).tolist() == np.argsort(order).tolist()


def test_expert_fr_metrics(tmp_path):
    """SSIM against scikit-image's (Gaussian window 11, sigma 1.5, population covariance, range 255) on the luma;
    PSNR by hand; MS-SSIM of an image with itself is 1, and with one scale it is SSIM."""
    import torch
    from skimage.metrics import structural_similarity
    from iqa_vlm import expert_iqa as E
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (180, 190, 3)).astype(np.uint8)
    b = np.clip(a + rng.normal(0, 15, a.shape), 0, 255).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "ref.png"), Image.fromarray(b).save(tmp_path / "dist.png")
    s = E.fr_scores(tmp_path / "dist.png", tmp_path / "ref.png")
    ya = E.luma255(torch.from_numpy(a / 255.0).permute(2, 0, 1)[None])[0, 0].numpy()
    yb = E.luma255(torch.from_numpy(b / 255.0).permute(2, 0, 1)[None])[0, 0].numpy()
    assert s["ssim"] == pytest.approx(structural_similarity(yb, ya, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                                            data_range=255), abs=1e-12)
    mse = ((a / 255.0 - b / 255.0) ** 2).mean()
    assert s["psnr"] == pytest.approx(10 * math.log10(1 / (mse + 1e-8)), abs=1e-9)
    x, y = E._rgb01(tmp_path / "dist.png"), E._rgb01(tmp_path / "ref.png")
    assert E.ms_ssim(x, x) == pytest.approx(1.0) and E.ms_ssim(x, y, weights=[1.0]) == pytest.approx(s["ssim"])
    assert 0 < s["ms_ssim"] < 1
    # MS-SSIM against a separate float64 implementation (scipy's Gaussian filter, 'valid' crop, numpy 2x2 pooling)
    from scipy.ndimage import gaussian_filter

    def filt(z):
        return gaussian_filter(z, 1.5, truncate=3.5, mode="constant")[5:-5, 5:-5]

    def terms(p, q):
        m1, m2 = filt(p), filt(q)
        s11, s22, s12 = filt(p * p) - m1 ** 2, filt(q * q) - m2 ** 2, filt(p * q) - m1 * m2
        c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
        cs = (2 * s12 + c2) / (s11 + s22 + c2)
        return float(((2 * m1 * m2 + c1) / (m1 ** 2 + m2 ** 2 + c1) * cs).mean()), float(cs.mean())

    def pool(z):  # odd sides padded with one zero row/column on each side, as avg_pool2d(padding=1) does
        z = np.pad(z, ((z.shape[0] % 2,) * 2, (z.shape[1] % 2,) * 2))
        z = z[:z.shape[0] // 2 * 2, :z.shape[1] // 2 * 2]
        return z.reshape(z.shape[0] // 2, 2, z.shape[1] // 2, 2).mean((1, 3))
    p, q, ref = yb.astype(float), ya.astype(float), 1.0
    for k, w in enumerate(E.MS_SSIM_WEIGHTS):
        full, cs = terms(p, q)
        ref *= max(full if k == 4 else cs, 0) ** w
        p, q = pool(p), pool(q)
    assert s["ms_ssim"] == pytest.approx(ref, abs=1e-9)
    Image.fromarray(a[:100]).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match="differ in size"):
        E.fr_scores(tmp_path / "small.png", tmp_path / "ref.png")
