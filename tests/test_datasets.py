"""iqa_datasets: readers on fixtures in each official layout, on the real IQA-PyTorch metadata with
placeholder images, error messages, split_items and norm_scores. CPU only, a few seconds.

    python -m pytest tests/test_datasets.py -q
"""
import atexit
import csv
import io
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from iqa_vlm import iqa_datasets as D  # noqa: E402

# Real IQA-PyTorch metadata: verbatim excerpts kept in tests/data/iqa_meta (each opens with a line naming its source
# file and commit), and the complete files when IQA_META_DIR names a folder of them (CI points it at its copy).
EXCERPTS = Path(__file__).resolve().parent / "data" / "iqa_meta"
FULL_META = os.environ.get("IQA_META_DIR") or None
full_meta = pytest.param("full", marks=pytest.mark.skipif(
    FULL_META is None, reason="IQA_META_DIR is not set: complete IQA-PyTorch metadata not at hand (the excerpts ran)"))
_stripped = {}

_buf = io.BytesIO()
Image.new("RGB", (1, 1)).save(_buf, "PNG")
PNG = _buf.getvalue()  # a valid 1x1 image; PIL identifies it by content whatever the extension


def img(path, size=4):
    """A tiny real image in the format its extension names."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (120, 30, 200)).save(path)
    return path


def placeholder(path, data=PNG):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_csv(path, header, rows):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def by_name(items):
    return {os.path.basename(it["image"]): it for it in items}


def labels(items):
    return dict(Counter(it["label"] for it in items if it["label"]))


# ============================================================================ official layouts
def make_live(root, realigned=False):
    """LIVE release 2: 982 entries; 3 references; entries 1, 228, 461 (first of jp2k/jpeg/wn) are reference copies."""
    from scipy.io import savemat
    refs = ["parrots.bmp", "buildings.bmp", "caps.bmp"]
    n = 982
    refnames = np.empty((1, n), dtype=object)
    for k in range(n):
        refnames[0, k] = refs[k % 3]
    orgs = np.zeros((1, n))
    orgs[0, [0, 227, 460]] = 1
    dmos = np.linspace(10, 90, n).reshape(1, n)
    dmos[orgs == 1] = 0
    if realigned:
        savemat(root / "dmos_realigned.mat", {"dmos_new": dmos, "orgs": orgs, "dmos_std": np.full((1, n), 3.0)})
    else:
        savemat(root / "dmos.mat", {"dmos": dmos, "orgs": orgs})
    savemat(root / "refnames_all.mat", {"refnames_all": refnames})
    k = 0
    for folder, count in D.LIVE_FOLDERS:
        for j in range(1, count + 1):
            if not orgs[0, k]:
                placeholder(root / folder / f"img{j}.bmp")
            k += 1
    for r in refs:
        img(root / "refimgs" / r)
    return dmos.ravel()


def test_live_official(tmp_path):
    dmos = make_live(tmp_path)
    items, info = D.read_live(tmp_path)
    assert info["layout"] == "official" and info["direction"] == "lower_better"
    assert info["n_ref_copies"] == 3 and info["n_rows"] == 979 and info["n_refs"] == 3
    # jp2k 227-1, jpeg 233-1, fastfading 174 -> compression; wn 174-1 -> noise; gblur 174 -> blur
    assert labels(items) == {"compression": 632, "noise": 173, "blur": 174, "clean": 3}
    assert info["excluded"] == {}
    it = next(i for i in items if i["id"] == "live/jp2k/img2.bmp")
    assert it["mos"] == pytest.approx(dmos[1]) and it["ref"] == "buildings" and it["dist"] == "jp2k"
    assert it["label"] == "compression" and it["level_idx"] is None and not it["is_ref"]
    assert not any(i["id"] == "live/jp2k/img1.bmp" for i in items)  # reference copy skipped
    ref = next(i for i in items if i["is_ref"] and i["ref"] == "parrots")
    assert ref["label"] == "clean" and ref["mos"] is None and ref["id"] == "live/refimgs/parrots.bmp"
    assert info["score_range"] == [pytest.approx(dmos[1]), pytest.approx(90.0)]
    assert set(items[0]) >= {"image", "id", "source", "ref", "dist", "level_idx", "mos", "std", "label", "is_ref"}


def test_live_official_realigned(tmp_path):
    make_live(tmp_path, realigned=True)
    items, info = D.read_live(tmp_path, check_images=False)
    assert info["score_variable"] == "dmos_new" and info["metadata_file"].endswith("dmos_realigned.mat")
    assert all(it["std"] == 3.0 for it in items if not it["is_ref"])


def test_live_missing_refnames(tmp_path):
    make_live(tmp_path)
    (tmp_path / "refnames_all.mat").unlink()
    with pytest.raises(D.DatasetError, match="refnames_all.mat not found"):
        D.read_live(tmp_path)


def make_csiq_xlsx(root):
    import openpyxl
    wb = openpyxl.Workbook()
    wb.active.title = "readme"
    ws = wb.create_sheet("all_by_image")
    ws["A1"] = "CSIQ DMOS"  # the release has a few title rows above the header, data from column D
    header = ["image", "dst_idx", "dst_type", "dst_lev", "dmos_std", "dmos"]
    rows = [(1600, 1, "noise", 1, 0.01, 0.061989), (1600, 2, "jpeg", 2, 0.02, 0.069148),
            (1600, 3, "jpeg 2000", 1, 0.03, 0.011967), ("aerial_city", 4, "fnoise", 3, 0.04, 0.25),
            ("aerial_city", 5, "blur", 5, 0.05, 0.9), ("aerial_city", 6, "contrast", 2, 0.06, 0.3)]
    for c, h in enumerate(header):
        ws.cell(row=4, column=4 + c, value=h)
    for r, row in enumerate(rows):
        for c, v in enumerate(row):
            ws.cell(row=5 + r, column=4 + c, value=v)
    wb.save(root / "csiq.DMOS.xlsx")
    for folder, name in [("awgn", "1600.AWGN.1.png"), ("jpeg", "1600.JPEG.2.png"), ("jpeg2000", "1600.jpeg2000.1.png"),
                         ("fnoise", "aerial_city.fnoise.3.png"), ("blur", "aerial_city.BLUR.5.png"),
                         ("contrast", "aerial_city.contrast.2.png")]:
        img(root / "dst_imgs" / folder / name)
    img(root / "src_imgs" / "1600.png")
    img(root / "src_imgs" / "aerial_city.png")
    return rows


def test_csiq_official_xlsx(tmp_path):
    make_csiq_xlsx(tmp_path)
    items, info = D.read_csiq(tmp_path)
    assert info["layout"] == "official" and info["direction"] == "lower_better" and info["n_rows"] == 6
    assert labels(items) == {"noise": 2, "compression": 2, "blur": 1, "contrast": 1, "clean": 2}
    assert info["excluded"] == {} and info["n_refs"] == 2
    n = by_name(items)
    assert n["1600.AWGN.1.png"]["dist"] == "awgn" and n["1600.AWGN.1.png"]["mos"] == pytest.approx(0.061989)
    assert n["1600.jpeg2000.1.png"]["dist"] == "jpeg2000" and n["1600.jpeg2000.1.png"]["label"] == "compression"
    assert n["aerial_city.fnoise.3.png"]["level_idx"] == 3 and n["aerial_city.fnoise.3.png"]["std"] == pytest.approx(0.04)
    assert n["aerial_city.BLUR.5.png"]["ref"] == "aerial_city"
    assert n["1600.png"]["is_ref"] and n["1600.png"]["label"] == "clean" and n["1600.png"]["id"] == "csiq/src_imgs/1600.png"
    assert n["1600.JPEG.2.png"]["id"] == "csiq/dst_imgs/jpeg/1600.JPEG.2.png"
    assert info["score_range"] == [pytest.approx(0.011967), pytest.approx(0.9)]


def test_csiq_official_label_txt_flat_folder(tmp_path):
    (tmp_path / "csiq_label.txt").write_text("1600.AWGN.1.png 0.061989\n1600.contrast.4.png 0.5\n\n")
    img(tmp_path / "dst_imgs" / "1600.AWGN.1.png")       # flat dst_imgs/, as IQA-PyTorch lays it out
    img(tmp_path / "dst_imgs" / "contrast" / "1600.contrast.4.png")
    img(tmp_path / "src_imgs" / "1600.png")
    items, info = D.read_csiq(tmp_path)
    assert info["metadata_file"].endswith("csiq_label.txt")
    assert labels(items) == {"noise": 1, "contrast": 1, "clean": 1}


def test_csiq_xlsx_bad_cell_names_row(tmp_path):
    import openpyxl
    make_csiq_xlsx(tmp_path)
    wb = openpyxl.load_workbook(tmp_path / "csiq.DMOS.xlsx")
    wb["all_by_image"]["I7"] = "n/a"  # dmos of the third data row
    wb.save(tmp_path / "csiq.DMOS.xlsx")
    with pytest.raises(D.DatasetError, match=r"csiq\.DMOS\.xlsx \(sheet 'all_by_image', row 7\): dmos is 'n/a'"):
        D.read_csiq(tmp_path)


KADID_ROWS = [("I01_01_01.png", "I01.png", 4.57, 0.496), ("I01_04_02.png", "I01.png", 4.33, 0.869),
              ("I01_07_02.png", "I01.png", 3.1, 0.7), ("I02_19_05.png", "I02.png", 1.67, 0.596),
              ("I02_25_03.png", "I02.png", 2.5, 0.5), ("I02_04_01.png", "I02.png", 4.9, 0.1)]


def make_kadid(root):
    write_csv(root / "dmos.csv", ["dist_img", "ref_img", "dmos", "var"], KADID_ROWS)
    for d, r, _, _ in KADID_ROWS:
        img(root / "images" / d)
        img(root / "images" / r)


def test_kadid_official(tmp_path):
    make_kadid(tmp_path)
    items, info = D.read_kadid10k(tmp_path)
    assert info["layout"] == "official" and info["direction"] == "higher_better" and info["n_rows"] == 6
    assert labels(items) == {"blur": 1, "colorfulness": 1, "jitter": 1, "contrast": 1, "clean": 2}
    assert info["excluded"] == {4: 2}
    n = by_name(items)
    it = n["I02_19_05.png"]
    assert (it["ref"], it["dist"], it["level_idx"], it["mos"], it["std"]) == ("I02", 19, 5, 1.67, 0.596)
    assert it["id"] == "kadid10k/images/I02_19_05.png"
    assert n["I01.png"]["is_ref"] and n["I01.png"]["mos"] is None
    assert info["score_range"] == [1.67, 4.9]


TID_LINES = ["5.51429 i01_01_1.bmp", "4.1 i01_08_2.bmp", "3.9 i01_11_1.bmp", "4.5 i01_15_3.bmp",
             "6.0 i25_16_4.bmp", "5.0 i25_17_5.bmp", "4.0 i25_18_1.bmp"]


def make_tid(root):
    root.mkdir(parents=True, exist_ok=True)
    (root / "mos_with_names.txt").write_text("\n".join(TID_LINES) + "\n")
    (root / "mos_std.txt").write_text("\n".join(str(0.1 * (i + 1)) for i in range(len(TID_LINES))) + "\n")
    for line in TID_LINES:
        name = line.split()[1]
        on_disk = name.upper() if "_11_" in name else name  # the release has I01_11_1.BMP on disk
        img(root / "distorted_images" / on_disk, size=4)
    img(root / "reference_images" / "I01.BMP")
    img(root / "reference_images" / "i25.bmp")


def test_tid2013_official_case_insensitive(tmp_path):
    make_tid(tmp_path)
    items, info = D.read_tid2013(tmp_path)
    assert info["layout"] == "official" and info["direction"] == "higher_better" and info["n_rows"] == 7
    assert labels(items) == {"noise": 1, "blur": 1, "compression": 1, "brightness": 1, "contrast": 1,
                             "colorfulness": 1, "clean": 2}
    assert info["excluded"] == {15: 1}  # local block-wise distortions: no category fits
    assert info["case_insensitive_matches"] == 2  # I01_11_1.BMP and i25.bmp (looked up as I25.BMP)
    n = by_name(items)
    assert n["I01_11_1.BMP"]["id"] == "tid2013/distorted_images/I01_11_1.BMP" and n["I01_11_1.BMP"]["dist"] == 11
    assert n["i25.bmp"]["ref"] == "I25" and n["i25.bmp"]["is_ref"]
    assert n["i01_08_2.bmp"]["std"] == pytest.approx(0.2) and n["i01_08_2.bmp"]["level_idx"] == 2
    assert info["score_range"] == [3.9, 6.0]


def test_tid2013_std_count_mismatch(tmp_path):
    make_tid(tmp_path)
    (tmp_path / "mos_std.txt").write_text("0.1\n0.2\n")
    with pytest.raises(D.DatasetError, match=r"mos_std\.txt: 2 values, expected 7"):
        D.read_tid2013(tmp_path)


# ----------------------------------------------------------------------------- scoring datasets, official
def test_koniq_official_with_split(tmp_path):
    hdr = ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore", "SD_zscore"]
    rows = [("a.jpg", 0, 0, .2, .7, .1, 100, 3.8, .5, 77.4, 9.1), ("b.jpg", 0, .1, .5, .4, 0, 96, 3.3, .6, 68.7, 10.2),
            ("c.jpg", .4, .5, .1, 0, 0, 100, 1.7, .6, 15.2, 11.0)]
    write_csv(tmp_path / "koniq10k_scores_and_distributions.csv", hdr, rows)
    write_csv(tmp_path / "koniq10k_distributions_sets.csv",
              ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "set"],
              [("a.jpg", 0, 0, .2, .7, .1, 100, 77.4, .5, "training"), ("b.jpg", 0, .1, .5, .4, 0, 96, 68.7, .6, "test"),
               ("c.jpg", .4, .5, .1, 0, 0, 100, 15.2, .6, "validation")])
    for r in rows:
        img(tmp_path / "1024x768" / r[0])
    items, info = D.read_koniq10k(tmp_path)
    assert info["layout"] == "official" and info["score_column"] == "MOS_zscore" and info["image_dir"] == "1024x768"
    assert info["split"] == {"koniq10k/1024x768/a.jpg": "training", "koniq10k/1024x768/b.jpg": "test",
                             "koniq10k/1024x768/c.jpg": "validation"}
    a = by_name(items)["a.jpg"]
    assert (a["mos"], a["std"], a["ref"], a["label"], a["dist"], a["is_ref"]) == (77.4, 9.1, "a", None, None, False)
    assert info["score_range"] == [15.2, 77.4] and info["excluded"] == {}


def test_spaq_official_xlsx(tmp_path):
    import openpyxl
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Image name", "MOS", "Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness"])
    ws.append(["00001.jpg", 48.86, 47.43, 55.57, 55.71, 37.86, 42.57])
    ws.append(["00002.jpg", 62.5, 55.38, 67.13, 53.13, 57.5, 47.5])
    (tmp_path / "Annotations").mkdir()
    wb.save(tmp_path / "Annotations" / "MOS and Image attribute scores.xlsx")
    img(tmp_path / "TestImage" / "00001.jpg")
    img(tmp_path / "TestImage" / "00002.jpg")
    items, info = D.read_spaq(tmp_path)
    assert info["layout"] == "official" and info["score_range"] == [48.86, 62.5]
    it = by_name(items)["00002.jpg"]
    assert it["mos"] == 62.5 and it["attributes"]["Sharpness"] == 47.5 and it["id"] == "spaq/TestImage/00002.jpg"


def test_livec_official(tmp_path):
    from scipy.io import savemat
    names = ["t1.bmp", "t2.bmp", "100.bmp", "101.bmp", "102.bmp"]
    cell = np.empty((len(names), 1), dtype=object)
    for i, n in enumerate(names):
        cell[i, 0] = n
    (tmp_path / "Data").mkdir()
    savemat(tmp_path / "Data" / "AllImages_release.mat", {"AllImages_release": cell})
    savemat(tmp_path / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.array([[63.9, 25.3, 50.0, 10.0, 90.0]])})
    savemat(tmp_path / "Data" / "AllStdDev_release.mat", {"AllStdDev_release": np.array([[18.0, 13.0, 15.0, 12.0, 11.0]])})
    for n in names:
        img(tmp_path / "Images" / ("trainingImages/" + n if n.startswith("t") else n))
    items, info = D.read_livec(tmp_path)
    assert info["layout"] == "official" and info["n_train_only"] == 2 and info["score_range"] == [10.0, 90.0]
    n = by_name(items)
    assert n["t1.bmp"]["is_train_only"] and not n["100.bmp"]["is_train_only"]
    assert n["t1.bmp"]["id"] == "livec/Images/trainingImages/t1.bmp" and n["101.bmp"]["std"] == 12.0
    train, test = D.split_items(items, test_frac=0.5, by="random")
    assert all(not it["is_train_only"] for it in test)


def test_agiqa3k(tmp_path):
    write_csv(tmp_path / "data.csv", ["name", "prompt", "adj1", "adj2", "style", "mos_quality", "std_quality",
                                      "mos_align", "std_align"],
              [("AttnGAN_normal_000.jpg", "statue of a man", "", "", "", 0.7, 0.4, 1.2, 0.5),
               ("midjourney_normal_001.jpg", "a cat, in the style of oil painting", "", "", "", 4.1, 0.6, 3.9, 0.7)])
    img(tmp_path / "images" / "AttnGAN_normal_000.jpg")
    img(tmp_path / "images" / "midjourney_normal_001.jpg")
    items, info = D.read_agiqa3k(tmp_path)
    it = by_name(items)["midjourney_normal_001.jpg"]
    assert it["mos"] == 4.1 and it["prompt"].startswith("a cat") and it["mos_align"] == 3.9 and it["label"] is None
    assert info["direction"] == "higher_better" and info["score_range"] == [0.7, 4.1]


def test_readers_table():
    assert set(D.READERS) == {"live", "csiq", "kadid10k", "tid2013", "koniq10k", "spaq", "livec", "agiqa3k"}


# ============================================================================ real pyiqa metadata
def meta_file(name, which="excerpt"):
    """A readable copy of the IQA-PyTorch metadata file `name`: the complete file from IQA_META_DIR (which="full"),
    or the excerpt kept in tests/ without its source line."""
    if which == "full":
        path = Path(FULL_META) / name
        if not path.is_file():
            raise FileNotFoundError(f"IQA_META_DIR={FULL_META} has no {name}")
        return path
    if name not in _stripped:
        lines = (EXCERPTS / name).read_text().splitlines(keepends=True)
        assert lines[0].startswith("# Verbatim excerpt of chaofengc/IQA-PyTorch") and "commit" in lines[0]
        folder = Path(tempfile.mkdtemp(prefix="iqa_meta_"))
        atexit.register(shutil.rmtree, folder, True)
        (folder / name).write_text("".join(lines[1:]))
        _stripped[name] = folder / name
    return _stripped[name]


def rows_of(name, which="excerpt"):
    with open(meta_file(name, which), newline="") as f:
        return list(csv.DictReader(f))


# The complete files' counts, by hand from the DESIGN.md table and the dataset sizes:
# LIVE (pyiqa leaves out the reference copies): gblur 145 blur, wn 145 noise, jp2k 169 + jpeg 175 + fastfading 145
#   = 489 compression, 29 references. 145+145+489 = 779 rows.
# CSIQ: blur 150, awgn 150 + fnoise 150 = 300 noise, jpeg 150 + jpeg2000 150 = 300 compression,
#   contrast 116 (not every contrast version was rated), 30 references. 150+300+300+116 = 866 rows.
# KADID-10k: 81 refs x 5 levels = 405 per type. blur 1,2,3,15 -> 1620; noise 11-14 -> 1620; brightness
#   16,17,18 -> 1215; compression 9,10,22 -> 1215; contrast 25 -> 405; colorfulness 7,8 -> 810; jitter 19,20 -> 810;
#   excluded 4,5,6,21,23,24 -> 6 x 405 = 2430. 7695 + 2430 = 10125 rows.
# TID2013: 25 refs x 5 levels = 125 per type. blur 8,9 -> 250; noise 1-7,19,20 -> 1125; brightness 16 -> 125;
#   compression 10,11,12,13,21,24 -> 750; contrast 17 -> 125; colorfulness 18 -> 125; jitter 14 -> 125; excluded
#   15,22,23 -> 375. 2625 + 375 = 3000 rows.
# Kept in all: 779 + 866 + 7695 + 2625 distorted + 165 references = 12,130 of the four sets' 14,935.
EXPECTED = {
    "live": dict(labels={"blur": 145, "noise": 145, "compression": 489, "clean": 29},
                 excluded={}, rows=779, refs=29, direction="lower_better", bounds=(0, 100)),
    "csiq": dict(labels={"blur": 150, "noise": 300, "compression": 300, "contrast": 116, "clean": 30},
                 excluded={}, rows=866, refs=30, direction="lower_better", bounds=(0, 1)),
    "kadid10k": dict(labels={"blur": 1620, "noise": 1620, "brightness": 1215, "compression": 1215, "contrast": 405,
                             "colorfulness": 810, "jitter": 810, "clean": 81},
                     excluded={t: 405 for t in (4, 5, 6, 21, 23, 24)}, rows=10125, refs=81,
                     direction="higher_better", bounds=(1, 5)),
    "tid2013": dict(labels={"blur": 250, "noise": 1125, "brightness": 125, "compression": 750, "contrast": 125,
                            "colorfulness": 125, "jitter": 125, "clean": 25},
                    excluded={t: 125 for t in (15, 22, 23)}, rows=3000, refs=25,
                    direction="higher_better", bounds=(0, 9)),
}
# the table again, written independently of iqa_datasets, to recount from the CSVs' type fields
TABLE = {
    "live": {"gblur": "blur", "wn": "noise", "jp2k": "compression", "jpeg": "compression", "fastfading": "compression"},
    "csiq": {"blur": "blur", "awgn": "noise", "fnoise": "noise", "jpeg": "compression", "jpeg2000": "compression",
             "contrast": "contrast"},
    "kadid10k": {**dict.fromkeys([1, 2, 3, 15], "blur"), **dict.fromkeys([11, 12, 13, 14], "noise"),
                 **dict.fromkeys([16, 17, 18], "brightness"), **dict.fromkeys([9, 10, 22], "compression"),
                 25: "contrast", 7: "colorfulness", 8: "colorfulness", 19: "jitter", 20: "jitter"},
    "tid2013": {8: "blur", 9: "blur", **dict.fromkeys([1, 2, 3, 4, 5, 6, 7, 19, 20], "noise"), 16: "brightness",
                **dict.fromkeys([10, 11, 12, 13, 21, 24], "compression"), 17: "contrast", 18: "colorfulness",
                14: "jitter"},
}


def type_field(source, dist_name):
    if source == "live":
        return dist_name.split("/")[0]
    if source == "csiq":
        return dist_name.split(".")[1].lower()
    return int(dist_name.split("_")[1])


def build_pyiqa(source, root, which="excerpt"):
    """Placeholder images where IQA-PyTorch expects them; the metadata CSV put in a different place per dataset."""
    csv_name = D.PYIQA_META[source]
    rows = rows_of(csv_name, which)
    dist_dir, ref_dir = {"live": ("", ""), "csiq": ("dst_imgs", "src_imgs"), "kadid10k": ("images", "images"),
                         "tid2013": ("distorted_images", "reference_images")}[source]
    paths = {root / dist_dir / r["dist_name"] for r in rows} | {root / ref_dir / r["ref_name"] for r in rows}
    for p in paths:  # each once: rewriting a file with data is slow on some filesystems (ext4 flushes it)
        placeholder(p)
    where = {"live": root / csv_name, "csiq": root.parent / "meta_info" / csv_name}.get(source)
    if where is not None:  # found automatically
        where.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(meta_file(csv_name, which), where)
        return rows, None
    return rows, meta_file(csv_name, which)  # passed explicitly


@pytest.mark.parametrize("which", ["excerpt", full_meta])
@pytest.mark.parametrize("source", ["live", "csiq", "kadid10k", "tid2013"])
def test_pyiqa_real_metadata(tmp_path, source, which):
    root = tmp_path / source
    rows, meta_file_arg = build_pyiqa(source, root, which)
    items, info = D.READERS[source](root, meta_file=meta_file_arg, check_images=True)  # PIL header check on all
    # what the reader must find, recounted from the CSV's type fields with TABLE (independent of iqa_datasets)
    types = Counter(type_field(source, r["dist_name"]) for r in rows)
    recount, excluded = Counter(), Counter()
    for t, c in types.items():
        if t in TABLE[source]:
            recount[TABLE[source][t]] += c
        else:
            excluded[t] += c
    refs = len({r["ref_name"] for r in rows})
    assert info["layout"] == "pyiqa" and info["direction"] == EXPECTED[source]["direction"]
    assert info["n_rows"] == len(rows)
    assert labels(items) == {**recount, "clean": refs}
    assert info["excluded"] == dict(excluded)
    assert info["n_refs"] == refs
    if which == "full":  # the complete files against the counts worked out by hand above
        exp = EXPECTED[source]
        assert len(rows) == exp["rows"] and labels(items) == exp["labels"] and info["excluded"] == exp["excluded"]
        assert refs == exp["refs"] == exp["labels"]["clean"]
        assert sum(exp["labels"].values()) - exp["refs"] + sum(exp["excluded"].values()) == exp["rows"]
    else:  # the excerpt spans every distortion type of its dataset
        assert set(types) == set(TABLE[source]) | set(EXPECTED[source]["excluded"]) and refs >= 2
    lo, hi = info["score_range"]
    assert EXPECTED[source]["bounds"][0] <= lo < hi <= EXPECTED[source]["bounds"][1]
    score_col = {"csiq": "dmos", "kadid10k": "dmos"}.get(source, "mos")
    assert [lo, hi] == [min(float(r[score_col]) for r in rows), max(float(r[score_col]) for r in rows)]
    assert len({it["id"] for it in items}) == len(items)
    assert all(os.path.isfile(it["image"]) for it in items[:50])


@pytest.mark.parametrize("which", ["excerpt", full_meta])
def test_pyiqa_kadid_split_by_ref(tmp_path, which):
    root = tmp_path / "kadid"
    _, meta_file_arg = build_pyiqa("kadid10k", root, which)
    items, _ = D.read_kadid10k(root, meta_file=meta_file_arg, check_images=False)
    train, test = D.split_items(items, test_frac=0.2, by="ref", seed=0)
    assert not {it["ref"] for it in train} & {it["ref"] for it in test} and train and test
    if which == "full":  # 81 groups of 126 images (125 distorted + the reference): 16 groups = 2016 is closest to 0.2 * 10206
        assert len(test) == 16 * 126 and len(train) == 65 * 126
    else:  # two groups of 126: one on each side
        assert len(test) == len(train) == 126


@pytest.mark.parametrize("which", ["excerpt", full_meta])
def test_pyiqa_scoring_datasets(tmp_path, which):
    # KonIQ-10k: pyiqa's split codes 0/1/2 are the official training/validation/test (7058/1000/2015 in the full file)
    name = "meta_info_KonIQ10kDataset.csv"
    rows = rows_of(name, which)
    for r in rows:
        placeholder(tmp_path / "koniq" / "512x384" / r["img_name"], b"")
    items, info = D.read_koniq10k(tmp_path / "koniq", meta_file=meta_file(name, which), check_images=False)
    codes = Counter({"0": "training", "1": "validation", "2": "test"}[r["split"]] for r in rows)
    assert info["n_rows"] == len(items) == len(rows) and info["image_dir"] == "512x384"
    assert info["split_counts"] == dict(codes) and len(codes) == 3
    assert 0 < info["score_range"][0] < info["score_range"][1] < 100
    if which == "full":
        assert len(rows) == 10073 and codes == {"training": 7058, "validation": 1000, "test": 2015}
    # SPAQ
    name = "meta_info_SPAQDataset.csv"
    rows = rows_of(name, which)
    for r in rows:
        placeholder(tmp_path / "spaq" / "TestImage" / r["Image name"], b"")
    items, info = D.read_spaq(tmp_path / "spaq", meta_file=meta_file(name, which), check_images=False)
    mos = [float(r["MOS"]) for r in rows]
    assert len(items) == len(rows) and info["score_range"] == [min(mos), max(mos)]
    assert items[0]["attributes"]["Brightness"] == 47.43  # the attribute, not the EXIF column of the same name
    if which == "full":
        assert len(items) == 11125 and info["score_range"] == [2.0, 96.0]
    # LIVE Challenge: t1..t7 flagged
    name = "meta_info_LIVEChallengeDataset.csv"
    rows = rows_of(name, which)
    for r in rows:
        placeholder(tmp_path / "livec" / r["img_name"], b"")
    items, info = D.read_livec(tmp_path / "livec", meta_file=meta_file(name, which), check_images=False)
    assert len(items) == len(rows) and info["n_train_only"] == 7
    assert sorted(it["ref"] for it in items if it["is_train_only"]) == [f"t{i}" for i in range(1, 8)]
    assert 0 <= info["score_range"][0] < info["score_range"][1] <= 100
    if which == "full":
        assert len(items) == 1169


# ============================================================================ errors
def test_missing_image_names_it_and_line(tmp_path):
    make_kadid(tmp_path)
    (tmp_path / "images" / "I01_07_02.png").unlink()  # 3rd data row = line 4
    with pytest.raises(D.DatasetError) as e:
        D.read_kadid10k(tmp_path)
    msg = str(e.value)
    assert "I01_07_02.png" in msg and f"{tmp_path / 'dmos.csv'}:4" in msg and "not found" in msg


def test_several_missing_images_are_all_counted(tmp_path):
    make_kadid(tmp_path)
    for n in ("I01_07_02.png", "I02_19_05.png"):
        (tmp_path / "images" / n).unlink()
    with pytest.raises(D.DatasetError, match=r"2 listed images are missing"):
        D.read_kadid10k(tmp_path)


def test_missing_image_pyiqa_tid(tmp_path):
    root = tmp_path / "tid2013"
    write_csv(root / "meta_info_TID2013Dataset.csv", ["ref_name", "dist_name", "mos", "std"],
              [("I01.BMP", "I01_01_1.bmp", 5.5, 0.1), ("I01.BMP", "i01_01_2.bmp", 5.0, 0.1)])
    img(root / "distorted_images" / "I01_01_1.bmp")
    img(root / "reference_images" / "I01.BMP")
    with pytest.raises(D.DatasetError, match=r"meta_info_TID2013Dataset\.csv:3: image 'i01_01_2\.bmp' is listed but not found"):
        D.read_tid2013(root)


def test_non_numeric_score_names_file_and_line(tmp_path):
    make_kadid(tmp_path)
    lines = (tmp_path / "dmos.csv").read_text().splitlines()
    lines[2] = "I01_04_02.png,I01.png,abc,0.869"
    (tmp_path / "dmos.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(D.DatasetError, match=r"dmos\.csv:3: dmos is 'abc', expected a number"):
        D.read_kadid10k(tmp_path)


def test_missing_column_names_file_and_header(tmp_path):
    make_kadid(tmp_path)
    write_csv(tmp_path / "dmos.csv", ["dist_img", "ref_img", "score", "var"], KADID_ROWS)
    with pytest.raises(D.DatasetError, match=r"dmos\.csv:1: missing column\(s\) dmos"):
        D.read_kadid10k(tmp_path)


def test_wrong_field_count(tmp_path):
    make_kadid(tmp_path)
    with open(tmp_path / "dmos.csv", "a") as f:
        f.write("I02_01_01.png,I02.png,3.0\n")
    with pytest.raises(D.DatasetError, match=r"dmos\.csv:8: expected 4 fields"):
        D.read_kadid10k(tmp_path)
    make_tid(tmp_path / "tid")
    (tmp_path / "tid" / "mos_with_names.txt").write_text("5.5 i01_01_1.bmp\n4.0 i01_08_2.bmp extra\n")
    with pytest.raises(D.DatasetError, match=r"mos_with_names\.txt:2: expected 2 fields"):
        D.read_tid2013(tmp_path / "tid")


def test_bad_name_pattern(tmp_path):
    write_csv(tmp_path / "dmos.csv", ["dist_img", "ref_img", "dmos", "var"], [("I01_31_01.png", "I01.png", 3, 0.1)])
    with pytest.raises(D.DatasetError, match=r"dmos\.csv:2: distortion type 31"):
        D.read_kadid10k(tmp_path)


def test_missing_metadata_names_what_was_looked_for(tmp_path):
    with pytest.raises(D.DatasetError) as e:
        D.read_kadid10k(tmp_path)
    msg = str(e.value)
    assert "dmos.csv" in msg and "meta_info_KADID10kDataset.csv" in msg and str(tmp_path) in msg
    with pytest.raises(D.DatasetError, match="looked for .*dmos.mat.*dmos_realigned.mat.*meta_info_LIVEIQADataset.csv"):
        D.read_live(tmp_path)
    with pytest.raises(D.DatasetError, match="dataset folder .* not found"):
        D.read_csiq(tmp_path / "nope")
    with pytest.raises(D.DatasetError, match="metadata file .*nothing.csv not found"):
        D.read_tid2013(tmp_path, meta_file=tmp_path / "nothing.csv")


def test_unreadable_image_names_it(tmp_path):
    make_kadid(tmp_path)
    (tmp_path / "images" / "I02_25_03.png").write_bytes(b"this is not an image")
    with pytest.raises(D.DatasetError) as e:
        D.read_kadid10k(tmp_path)
    assert "cannot decode image" in str(e.value) and "I02_25_03.png" in str(e.value) and "dmos.csv:6" in str(e.value)
    items, _ = D.read_kadid10k(tmp_path, check_images=False)  # the check can be switched off
    assert len(items) == 8


def test_truncated_image_is_decoded_and_named(tmp_path):
    """A half-downloaded JPEG has a valid header (a header check passes it); a full decode does not."""
    make_kadid(tmp_path)
    path = tmp_path / "images" / "I01_07_02.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, "JPEG")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with Image.open(path) as im:
        assert im.size == (64, 64)  # the header alone looks fine
    with pytest.raises(D.DatasetError, match=r"dmos\.csv:4: cannot decode image .*I01_07_02\.png.*truncated"):
        D.read_kadid10k(tmp_path)
    items, info = D.read_kadid10k(tmp_path, check_images="skip")  # --skip_bad_images true: left out, counted
    assert len(items) == 7 and "I01_07_02.png" not in by_name(items)
    assert len(info["bad_images"]) == 1 and "dmos.csv:4" in info["bad_images"][0]


def test_duplicate_rows(tmp_path):
    rows = KADID_ROWS + [("I02_19_05.png", "I02.png", 1.67, 0.596)]  # the same row again: kept once, counted
    write_csv(tmp_path / "dmos.csv", ["dist_img", "ref_img", "dmos", "var"], rows)
    for d, r, _, _ in rows:
        img(tmp_path / "images" / d), img(tmp_path / "images" / r)
    items, info = D.read_kadid10k(tmp_path)
    assert len(items) == 8 and info["duplicate_rows"] == 1
    rows[-1] = ("I02_19_05.png", "I02.png", 4.8, 0.596)  # conflicting: one image both bad and excellent
    write_csv(tmp_path / "dmos.csv", ["dist_img", "ref_img", "dmos", "var"], rows)
    with pytest.raises(D.DatasetError, match=r"dmos\.csv:8: 'I02_19_05.png' has score 4.8, but .*dmos\.csv:5 gives it 1.67"):
        D.read_kadid10k(tmp_path)


@pytest.mark.parametrize("value, message", [("nan", "expected a finite number"), ("inf", "expected a finite number"),
                                            ("41350", r"score 41350.0 is outside kadid10k's scale \[1, 5\]")])
def test_bad_score_names_file_and_line(tmp_path, value, message):
    make_kadid(tmp_path)
    rows = [list(r) for r in KADID_ROWS]
    rows[2][2] = value
    write_csv(tmp_path / "dmos.csv", ["dist_img", "ref_img", "dmos", "var"], rows)
    with pytest.raises(D.DatasetError, match=r"dmos\.csv:4: .*" + message):
        D.read_kadid10k(tmp_path)


def test_nan_in_mat_names_entry(tmp_path):
    """A NaN MOS in LIVE Challenge's .mat once became level excellent with mos_norm 0."""
    from scipy.io import savemat
    (tmp_path / "Data").mkdir()
    savemat(tmp_path / "Data" / "AllImages_release.mat", {"AllImages_release": np.array([["a.bmp"], ["b.bmp"]], dtype=object)})
    savemat(tmp_path / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.array([[50.0, np.nan]])})
    with pytest.raises(D.DatasetError, match=r"AllMOS_release.mat: variable 'AllMOS_release': entry 2 is nan"):
        D.read_livec(tmp_path)


def test_empty_metadata_is_an_error(tmp_path):
    (tmp_path / "mos_with_names.txt").write_text("")  # an empty TID2013 list
    with pytest.raises(D.DatasetError, match=r"mos_with_names.txt: no rated image in it \(0 records\)"):
        D.read_tid2013(tmp_path)
    write_csv(tmp_path / "k" / "dmos.csv", ["dist_img", "ref_img", "dmos", "var"], [])  # a header-only CSV
    with pytest.raises(D.DatasetError, match=r"dmos.csv: no rated image in it"):
        D.read_kadid10k(tmp_path / "k")


# ============================================================================ split_items
def synthetic_items():
    items = []
    for source, n_refs, per_ref in (("a", 10, 5), ("b", 23, 3)):
        for r in range(n_refs):
            for k in range(per_ref + (r % 3)):  # unequal group sizes
                items.append(dict(id=f"{source}/{r}_{k}", source=source, ref=f"R{r}", mos=float(k), is_ref=k == 0))
    return items


def test_split_by_ref_keeps_refs_together_and_is_deterministic():
    items = synthetic_items()
    train, test = D.split_items(items, test_frac=0.2, by="ref", seed=0)
    assert len(train) + len(test) == len(items)
    assert not {(i["source"], i["ref"]) for i in train} & {(i["source"], i["ref"]) for i in test}
    for source in ("a", "b"):
        n = sum(i["source"] == source for i in items)
        nt = sum(i["source"] == source for i in test)
        assert abs(nt / n - 0.2) <= 7 / n  # within one group of the target (largest group has 7 items)
    again = D.split_items(items, test_frac=0.2, by="ref", seed=0)
    assert [i["id"] for i in again[1]] == [i["id"] for i in test]
    other = D.split_items(items, test_frac=0.2, by="ref", seed=1)
    assert [i["id"] for i in other[1]] != [i["id"] for i in test]
    assert [i["id"] for i in train] == [i["id"] for i in items if i in train]  # input order kept


def test_split_random():
    items = synthetic_items()
    train, test = D.split_items(items, test_frac=0.2, by="random", seed=3)
    for source in ("a", "b"):
        n = sum(i["source"] == source for i in items)
        assert sum(i["source"] == source for i in test) == round(0.2 * n)
    assert D.split_items(items, by="random", seed=3)[1] == test
    # one draw over the mix (the distortion paper's split): the pool's share is exact, each source's only on average
    train, test = D.split_items(items, test_frac=0.2, by="random", seed=3, per_source=False)
    assert len(test) == round(0.2 * len(items)) and len(train) + len(test) == len(items)
    assert {i["source"] for i in test} == {"a", "b"}
    train, test = D.split_items(items, test_frac=0.2, by="ref", seed=3, per_source=False)
    assert not {(i["source"], i["ref"]) for i in train} & {(i["source"], i["ref"]) for i in test}
    with pytest.raises(ValueError):
        D.split_items(items, by="nope")


# ============================================================================ norm_scores
def scored(values, source="x", **extra):
    return [dict(id=f"{source}/{i}", source=source, ref=str(i), mos=v, is_ref=False, **extra) for i, v in enumerate(values)]


def test_norm_scores_levels_and_boundaries():
    items = scored([0.0, 20.0, 20.5, 40.0, 60.0, 80.0, 80.1, 100.0]) + scored([None])
    D.norm_scores(items, {"source": "x", "direction": "higher_better", "score_range": [0.0, 100.0]})
    assert [it["level"] for it in items] == ["bad", "bad", "poor", "poor", "fair", "good", "excellent", "excellent", None]
    assert [it["mos_norm"] for it in items[:-1]] == pytest.approx([0, .2, .205, .4, .6, .8, .801, 1])
    assert items[-1]["mos_norm"] is None


def test_norm_scores_dmos_flip():
    items = scored([0.0, 100.0, 80.0, 79.5, 20.0, 50.0])
    D.norm_scores(items, {"source": "x", "direction": "lower_better", "score_range": [0.0, 100.0]})
    assert [it["mos_norm"] for it in items] == pytest.approx([1.0, 0.0, 0.2, 0.205, 0.8, 0.5])
    # dmos 80 -> 20 on the higher-is-better scale: exactly the bad/poor boundary -> bad
    assert [it["level"] for it in items] == ["excellent", "bad", "bad", "poor", "good", "fair"]
    csiq = scored([0.25, 0.0, 1.0], source="csiq")
    D.norm_scores(csiq, {"source": "csiq", "direction": "lower_better", "score_range": [0.0, 1.0]})
    assert [it["mos_norm"] for it in csiq] == pytest.approx([0.75, 1.0, 0.0])


def test_norm_scores_uses_the_dataset_range():
    # KADID-like 1..5: the range comes from info (the whole dataset), not from the items passed
    items = scored([3.0, 2.6, 2.61])
    D.norm_scores(items, {"source": "x", "direction": "higher_better", "score_range": [1.0, 5.0]})
    assert items[0]["mos_norm"] == pytest.approx(0.5) and items[0]["level"] == "fair"
    assert items[1]["level"] == "poor" and items[2]["level"] == "fair"  # 2.6 = 1 + 2 * 4/5 is poor's top
    # without a range in info: the items' own min/max; several sources with {source: info}
    mixed = scored([2.0, 4.0, 3.0], source="p") + scored([10.0, 30.0], source="q")
    D.norm_scores(mixed, {"p": {"source": "p", "direction": "higher_better"},
                          "q": {"source": "q", "direction": "lower_better"}})
    assert [it["mos_norm"] for it in mixed] == pytest.approx([0.0, 1.0, 0.5, 1.0, 0.0])
    with pytest.raises(D.DatasetError, match="all scores are equal"):
        D.norm_scores(scored([1.0, 1.0]), {"source": "x", "direction": "higher_better"})


def test_norm_scores_on_reader_output(tmp_path):
    make_csiq_xlsx(tmp_path)
    items, info = D.read_csiq(tmp_path)
    D.norm_scores(items, info)
    n = by_name(items)
    assert n["aerial_city.BLUR.5.png"]["mos_norm"] == pytest.approx(0.0) and n["aerial_city.BLUR.5.png"]["level"] == "bad"
    assert n["1600.jpeg2000.1.png"]["mos_norm"] == pytest.approx(1.0) and n["1600.jpeg2000.1.png"]["level"] == "excellent"
    assert n["1600.png"]["mos_norm"] is None and n["1600.png"]["level"] is None
