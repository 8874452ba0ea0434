"""Readers for the public IQA datasets, from their official release layout or from IQA-PyTorch's.

    from iqa_vlm import iqa_datasets as D
    items, info = D.read_kadid10k("/data/kadid10k")            # layout detected from the files present
    items, info = D.READERS["live"]("/data/LIVE", check_images=False)
    items, info = D.read_tid2013("/data/tid2013", meta_file="/data/meta_info/meta_info_TID2013Dataset.csv")
    D.norm_scores(items, info)                                 # adds mos_norm in [0, 1] and the 5-level label
    train, test = D.split_items(items, test_frac=0.2, by="ref", seed=0)

Every reader is `read_<name>(root, meta_file=None, check_images=True, ...) -> (items, info)`.

An item is one image: {image (absolute path), id (f"{source}/{path relative to root}"), source, ref (the
reference content: the split-by-reference key; the image's own name for authentic datasets), dist (the
dataset's own distortion type: folder/type name for LIVE and CSIQ, type id for KADID-10k and TID2013; None for
references and authentic images), level_idx (severity where the dataset has one), mos (raw score as in the
metadata; None for references), std, label (one of CLASSES by the DESIGN.md table; None for excluded types and
for authentic datasets), is_ref}. Some datasets add keys (split, is_train_only, prompt, attributes, ...).

`info` says how the dataset was read: source, layout ("official" | "pyiqa"), direction ("higher_better" |
"lower_better": LIVE and CSIQ give DMOS), score_range [min, max] of the scores read, metadata_file, n_rows,
excluded {distortion type: count of images whose type is not in the table}, counts, and per-dataset extras.

Layouts. Official: the files of each release as its authors ship them (names in each reader). pyiqa: a
`meta_info_<Name>Dataset.csv` as IQA-PyTorch ships it, found in `root`, `root/meta_info`, `root/../meta_info`,
`root/..` or given as `meta_file`; image names are joined to the folder IQA-PyTorch uses as its data root
(e.g. `kadid10k/images`, `tid2013/distorted_images`, `CSIQ/dst_imgs`), tried below `root` and in `root` itself.
Official metadata wins when both are present and no meta_file is given. Image names are matched exactly
first and then ignoring case (TID2013 and CSIQ mix upper- and lower-case names); info["case_insensitive_matches"]
counts the latter.

Problems raise DatasetError (a ValueError) naming the file, the line/row/entry (1-based, as an editor shows it)
and what was expected: a missing folder or metadata file, malformed metadata, a NaN/inf score, a score outside the
dataset's scale (iqa_io.SCORE_SCALE), an image listed twice with different scores, metadata with no rated image, an
image listed but absent, an image PIL cannot fully decode (`check_images="skip"` leaves those out and lists them in
info["bad_images"]; `check_images=False` does not open images).
"""
import os
import random
import re
from collections import Counter

from iqa_vlm import iqa_io as F
from iqa_vlm.data import LABELS, LEVELS
from iqa_vlm.iqa_io import PYIQA_META, DatasetError  # noqa: F401  (importers read them from here too)

CLASSES = LABELS  # the 8 distortion classes (data.py holds the project's label sets)





# ----------------------------------------------------------------------------- distortion type -> class
# The table in DESIGN.md: every type one of the seven categories fits. The distortion paper names the categories but
# not its per-type table, so the assignment is this repo's: a type joins the category of what it visibly does (fast
# fading and transmission errors are damaged compressed streams, denoising over-smooths, a shifted patch is jitter).
# Types no category fits are excluded (label None), counted in info["excluded"], with the reason in EXCLUDED_WHY.
LIVE_CLASSES = {"gblur": "blur", "wn": "noise", "jp2k": "compression", "jpeg": "compression",
                "fastfading": "compression"}  # JPEG2000 streams sent over a fading channel
# LIVE release 2 order of dmos.mat / refnames_all.mat: folder, number of images (img1.bmp .. imgN.bmp)
LIVE_FOLDERS = [("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174)]

CSIQ_CLASSES = {"blur": "blur", "awgn": "noise", "fnoise": "noise", "jpeg": "compression",
                "jpeg2000": "compression", "contrast": "contrast"}
# canonical type -> (folder under dst_imgs/, token in the file name 1600.<token>.<level>.png)
CSIQ_FILES = {"awgn": ("awgn", "AWGN"), "jpeg": ("jpeg", "JPEG"), "jpeg2000": ("jpeg2000", "jpeg2000"),
              "fnoise": ("fnoise", "fnoise"), "blur": ("blur", "BLUR"), "contrast": ("contrast", "contrast")}
# csiq.DMOS.xlsx spells two types differently from the file names
CSIQ_ALIASES = {"noise": "awgn", "jpeg 2000": "jpeg2000"}

KADID_TYPES = {1: "gaussian blur", 2: "lens blur", 3: "motion blur", 4: "color diffusion", 5: "color shift",
               6: "color quantization", 7: "color saturation 1", 8: "color saturation 2", 9: "jpeg2000",
               10: "jpeg", 11: "white noise", 12: "white noise in color component", 13: "impulse noise",
               14: "multiplicative noise", 15: "denoise", 16: "brighten", 17: "darken", 18: "mean shift",
               19: "jitter", 20: "non-eccentricity patch", 21: "pixelate", 22: "quantization",
               23: "color block", 24: "high sharpen", 25: "contrast change"}
KADID_CLASSES = {1: "blur", 2: "blur", 3: "blur", 11: "noise", 12: "noise", 13: "noise", 14: "noise",
                 16: "brightness", 17: "brightness", 18: "brightness", 9: "compression", 10: "compression",
                 25: "contrast", 7: "colorfulness", 8: "colorfulness", 19: "jitter",
                 15: "blur",           # denoise: over-smoothing removes detail as blur does
                 20: "jitter",         # non-eccentricity patch: local patches displaced
                 22: "compression"}    # quantization: banding, as coarse coding leaves

TID2013_TYPES = {1: "additive gaussian noise", 2: "additive noise in color components",
                 3: "spatially correlated noise", 4: "masked noise", 5: "high frequency noise",
                 6: "impulse noise", 7: "quantization noise", 8: "gaussian blur", 9: "image denoising",
                 10: "jpeg", 11: "jpeg2000", 12: "jpeg transmission errors",
                 13: "jpeg2000 transmission errors", 14: "non eccentricity pattern noise",
                 15: "local block-wise distortions", 16: "mean shift", 17: "contrast change",
                 18: "change of color saturation", 19: "multiplicative gaussian noise", 20: "comfort noise",
                 21: "lossy compression of noisy images", 22: "color quantization with dither",
                 23: "chromatic aberrations", 24: "sparse sampling and reconstruction"}
TID2013_CLASSES = {8: "blur", 1: "noise", 2: "noise", 3: "noise", 4: "noise", 5: "noise", 6: "noise",
                   19: "noise", 20: "noise", 16: "brightness", 10: "compression", 11: "compression",
                   17: "contrast", 18: "colorfulness",
                   7: "noise",          # quantization noise: TID2013 names it a noise
                   9: "blur",           # image denoising: over-smoothing, as KADID-10k's denoise
                   12: "compression",   # jpeg transmission errors: a damaged compressed stream
                   13: "compression",   # jpeg2000 transmission errors
                   14: "jitter",        # non eccentricity pattern noise: patches displaced, as KADID-10k's 20
                   21: "compression",   # lossy compression of noisy images
                   24: "compression"}   # sparse sampling and reconstruction: coding loss
# why the remaining types stay out: no category fits without stretching it (colorfulness is saturation, not any
# colour error)
EXCLUDED_WHY = {"kadid10k": {4: "color diffusion: chroma blur, a colour error that is not saturation",
                             5: "color shift: channels misregistered, not saturation",
                             6: "color quantization: palette reduction, not saturation",
                             21: "pixelate: block replication, no category's look",
                             23: "color block: pasted patches, no category fits",
                             24: "high sharpen: the opposite of blur, no category fits"},
                "tid2013": {15: "local block-wise distortions: pasted patches, no category fits",
                            22: "color quantization with dither: not saturation",
                            23: "chromatic aberrations: channels misregistered, not saturation"}}




# ----------------------------------------------------------------------------- synthetic distortion datasets
def read_live(root, meta_file=None, check_images=True, realigned=False):
    """LIVE IQA release 2 (DMOS, lower = better; 29 references, 5 distortion folders).

    Official: dmos.mat ('dmos', 'orgs'; or dmos_realigned.mat with 'dmos_new', 'orgs', 'dmos_std', used when
    dmos.mat is absent or realigned=True) + refnames_all.mat ('refnames_all'), 982 entries in the order
    jp2k/img1..227, jpeg/img1..233, wn/, gblur/, fastfading/ img1..174, references in refimgs/. Entries with
    orgs == 1 are copies of a reference inside a distortion folder: skipped (counted in info["n_ref_copies"]),
    the reference itself comes from refimgs/ as a 'clean' item without score.
    pyiqa: meta_info_LIVEIQADataset.csv (ref_name, dist_name, mos), names relative to root
    (dist 'jp2k/img2.bmp', ref 'refimgs/x.bmp'); pyiqa already left out the orgs copies."""
    source = "live"
    root = F.root(root, source)
    official = ["dmos_realigned.mat", "dmos.mat"] if realigned else ["dmos.mat", "dmos_realigned.mat"]
    layout, meta = F.find_meta(root, source, official, meta_file)
    files, rows, extra = F.Files(root), [], {}
    if layout == "official":
        names_path = os.path.join(root, "refnames_all.mat")
        if not os.path.isfile(names_path):
            raise DatasetError(f"{source}: {names_path} not found (the LIVE release has it next to {os.path.basename(meta)})")
        mat = F.loadmat(meta)
        key = "dmos_new" if "dmos_new" in mat else "dmos"
        dmos, orgs = F.mat_numbers(mat, key, meta), F.mat_numbers(mat, "orgs", meta)
        stds = F.mat_numbers(mat, "dmos_std", meta) if "dmos_std" in mat else None
        refnames = F.mat_strings(F.loadmat(names_path), "refnames_all", names_path)
        n = sum(c for _, c in LIVE_FOLDERS)
        layout_text = ", ".join(f"{f} {c}" for f, c in LIVE_FOLDERS)
        for what, arr, path in ((key, dmos, meta), ("orgs", orgs, meta), ("refnames_all", refnames, names_path),
                                ("dmos_std", stds, meta)):
            if arr is not None and len(arr) != n:
                raise DatasetError(f"{path}: {what} has {len(arr)} entries, expected {n} ({layout_text})")
        k, copies = 0, 0
        for folder, count in LIVE_FOLDERS:
            for j in range(1, count + 1):
                if orgs[k]:
                    copies += 1
                else:
                    rows.append((f"{meta} entry {k + 1} ({key})", f"refimgs/{refnames[k]}", f"{folder}/img{j}.bmp",
                                 dmos[k], stds[k] if stds else None))
                k += 1
        extra = dict(score_variable=key, n_ref_copies=copies, refnames_file=names_path)
    else:
        for line, r in F.read_csv(meta, ["ref_name", "dist_name", "mos"])[1]:
            where = f"{meta}:{line}"
            rows.append((where, r["ref_name"], r["dist_name"], F.num(r["mos"], where, "mos"), None))
    items, refs = [], {}
    for where, ref_name, dist_name, mos, std in rows:
        folder = dist_name.replace("\\", "/").split("/")[0] if "/" in dist_name.replace("\\", "/") else None
        if folder is None:
            raise DatasetError(f"{where}: dist_name {dist_name!r}, expected '<folder>/imgN.bmp' (e.g. jp2k/img2.bmp)")
        ref = F.stem(ref_name)
        refs.setdefault(ref, (ref_name, where))
        items.append(F.item(files, source, dist_name, ["."], where, ref, dist=folder, mos=mos, std=std,
                           label=LIVE_CLASSES.get(folder)))
    F.add_refs(items, files, source, refs, ["."])
    info = dict(source=source, layout=layout, direction="lower_better", metadata_file=meta, n_rows=len(rows),
                root=root, **extra)
    return F.finish(items, files, info, check_images)


def _csiq_name(name, where):
    """'1600.AWGN.1.png' -> (ref '1600', canonical type 'awgn', level 1)."""
    parts = os.path.basename(name).split(".")
    if len(parts) != 4 or not parts[2].isdigit():
        raise DatasetError(f"{where}: image name {name!r}, expected <ref>.<TYPE>.<level>.png (e.g. 1600.AWGN.1.png)")
    kind = parts[1].strip().lower()
    return parts[0], CSIQ_ALIASES.get(kind, kind), int(parts[2])


def read_csiq(root, meta_file=None, check_images=True):
    """CSIQ (DMOS 0..1, lower = better; 30 references, 6 types, 866 rated images).

    Official: csiq.DMOS.xlsx, sheet 'all_by_image' (header row with image, dst_idx, dst_type, dst_lev,
    dmos_std, dmos; types noise/jpeg/jpeg 2000/fnoise/blur/contrast), or csiq_label.txt ('<name> <dmos>' per
    line); distorted images dst_imgs/<type>/<ref>.<TYPE>.<level>.png (1600.AWGN.1.png, 1600.JPEG.1.png,
    1600.jpeg2000.1.png, 1600.fnoise.1.png, 1600.BLUR.1.png, 1600.contrast.1.png), references src_imgs/<ref>.png.
    pyiqa: meta_info_CSIQDataset.csv (ref_name, dist_name, dmos); IQA-PyTorch joins the names to dst_imgs/ and
    src_imgs/ directly. Both folder forms (dst_imgs/<type>/ and a flat dst_imgs/ or dst_imgs_all/) are searched.
    dist is the canonical type: awgn, jpeg, jpeg2000, fnoise, blur, contrast."""
    source = "csiq"
    root = F.root(root, source)
    layout, meta = F.find_meta(root, source, ["csiq.DMOS.xlsx", "csiq_label.txt"], meta_file)
    files, rows, extra = F.Files(root), [], {}
    if meta.endswith(".xlsx") and layout == "official":
        for where, r in F.read_xlsx(meta, ["image", "dst_type", "dst_lev", "dmos"], ["dmos_std"], sheet="all_by_image"):
            image, kind = r["image"], r["dst_type"]
            if image is None or kind is None or not str(kind).strip():
                raise DatasetError(f"{where}: empty image or dst_type cell, expected e.g. image 1600, dst_type noise")
            ref = str(int(image)) if isinstance(image, (int, float)) and float(image).is_integer() else str(image).strip()
            kind = str(kind).strip().lower()
            kind = CSIQ_ALIASES.get(kind, kind)
            level = F.num(r["dst_lev"], where, "dst_lev")
            if not level.is_integer():
                raise DatasetError(f"{where}: dst_lev is {r['dst_lev']!r}, expected an integer level")
            folder, token = CSIQ_FILES.get(kind, (kind, kind))
            rows.append((where, ref, kind, int(level), f"{ref}.{token}.{int(level)}.png", folder,
                         F.num(r["dmos"], where, "dmos"), F.opt_num(r.get("dmos_std"), where, "dmos_std")))
        extra = dict(sheet="all_by_image")
    elif layout == "official":
        for line, (name, value) in F.read_table(meta, 2, "image name, dmos"):
            where = f"{meta}:{line}"
            ref, kind, level = _csiq_name(name, where)
            rows.append((where, ref, kind, level, name, CSIQ_FILES.get(kind, (kind,))[0], F.num(value, where, "dmos"), None))
    else:
        for line, r in F.read_csv(meta, ["ref_name", "dist_name", "dmos"])[1]:
            where = f"{meta}:{line}"
            ref, kind, level = _csiq_name(r["dist_name"], where)
            if F.stem(r["ref_name"]) != ref:
                raise DatasetError(f"{where}: ref_name {r['ref_name']!r} does not match dist_name {r['dist_name']!r}")
            rows.append((where, ref, kind, level, r["dist_name"], CSIQ_FILES.get(kind, (kind,))[0],
                         F.num(r["dmos"], where, "dmos"), None))
    items, refs = [], {}
    for where, ref, kind, level, name, folder, dmos, std in rows:
        refs.setdefault(ref, (f"{ref}.png", where))
        items.append(F.item(files, source, name, [f"dst_imgs/{folder}", "dst_imgs", "dst_imgs_all", "."], where, ref,
                           dist=kind, level_idx=level, mos=dmos, std=std, label=CSIQ_CLASSES.get(kind)))
    F.add_refs(items, files, source, refs, ["src_imgs", "."])
    info = dict(source=source, layout=layout, direction="lower_better", metadata_file=meta, n_rows=len(rows),
                root=root, **extra)
    return F.finish(items, files, info, check_images)


_KADID_NAME = re.compile(r"^(I\d+)_(\d+)_(\d+)\.\w+$", re.IGNORECASE)


def read_kadid10k(root, meta_file=None, check_images=True):
    """KADID-10k (81 references x 25 types x 5 levels; scores 1..5, higher = better although the column is
    called dmos). Names I01_01_01.png = reference_type_level; type ids 1..25 (KADID_TYPES).

    Official: dmos.csv (dist_img, ref_img, dmos, var), all images (references I01.png too) in images/.
    pyiqa: meta_info_KADID10kDataset.csv (ref_name, dist_name, dmos, std), names joined to kadid10k/images.
    `std` holds the value of the official 'var' column as given (pyiqa copies it into its 'std' column)."""
    source = "kadid10k"
    root = F.root(root, source)
    layout, meta = F.find_meta(root, source, ["dmos.csv"], meta_file)
    if layout == "official":
        dist_col, ref_col, score_col, spread_col = cols = ["dist_img", "ref_img", "dmos", "var"]
    else:
        ref_col, dist_col, score_col, spread_col = cols = ["ref_name", "dist_name", "dmos", "std"]
    files, items, refs = F.Files(root), [], {}
    rows = F.read_csv(meta, cols)[1]
    for line, r in rows:
        where = f"{meta}:{line}"
        m = _KADID_NAME.match(r[dist_col])
        if not m:
            raise DatasetError(f"{where}: {dist_col} {r[dist_col]!r}, expected a name like I01_01_01.png")
        kind, level = int(m.group(2)), int(m.group(3))
        if kind not in KADID_TYPES:
            raise DatasetError(f"{where}: distortion type {kind} in {r[dist_col]!r}, expected 1..25")
        ref = F.stem(r[ref_col])
        refs.setdefault(ref, (r[ref_col], where))
        items.append(F.item(files, source, r[dist_col], ["images", "."], where, ref, dist=kind, level_idx=level,
                           mos=F.num(r[score_col], where, score_col), std=F.opt_num(r[spread_col], where, spread_col),
                           label=KADID_CLASSES.get(kind)))
    F.add_refs(items, files, source, refs, ["images", "."])
    info = dict(source=source, layout=layout, direction="higher_better", metadata_file=meta, n_rows=len(rows),
                root=root, dist_names=KADID_TYPES, std_column=spread_col)
    return F.finish(items, files, info, check_images)


_TID_NAME = re.compile(r"^i(\d\d)_(\d\d)_(\d)\.bmp$", re.IGNORECASE)


def read_tid2013(root, meta_file=None, check_images=True):
    """TID2013 (25 references x 24 types x 5 levels; MOS 0..9, higher = better). Names i01_01_1.bmp =
    reference_type_level; type ids 1..24 (TID2013_TYPES).

    Official: mos_with_names.txt ('<mos> <name>' per line), optional mos_std.txt (one value per line, same
    order), distorted_images/, reference_images/ (I01.BMP .. I24.BMP, i25.bmp).
    pyiqa: meta_info_TID2013Dataset.csv (ref_name, dist_name, mos, std), names joined to distorted_images/ and
    reference_images/. The release mixes upper- and lower-case names (i01_01_1.bmp, I01_11_1.BMP, I01.BMP,
    i25.bmp), so names are matched ignoring case (info["case_insensitive_matches"])."""
    source = "tid2013"
    root = F.root(root, source)
    layout, meta = F.find_meta(root, source, ["mos_with_names.txt"], meta_file)
    files, rows, extra = F.Files(root), [], {}
    if layout == "official":
        table = F.read_table(meta, 2, "mos, image name")
        std_path = os.path.join(root, "mos_std.txt")
        stds = [None] * len(table)
        if os.path.isfile(std_path):
            std_rows = F.read_table(std_path, 1, "std")
            if len(std_rows) != len(table):
                raise DatasetError(f"{std_path}: {len(std_rows)} values, expected {len(table)} (one per line of {meta})")
            stds = [F.num(v[0], f"{std_path}:{line}", "std") for line, v in std_rows]
            extra["std_file"] = std_path
        for (line, (mos, name)), std in zip(table, stds):
            where = f"{meta}:{line}"
            rows.append((where, None, name, F.num(mos, where, "mos"), std))
    else:
        for line, r in F.read_csv(meta, ["ref_name", "dist_name", "mos", "std"])[1]:
            where = f"{meta}:{line}"
            rows.append((where, r["ref_name"], r["dist_name"], F.num(r["mos"], where, "mos"),
                         F.opt_num(r["std"], where, "std")))
    items, refs = [], {}
    for where, ref_name, name, mos, std in rows:
        m = _TID_NAME.match(name)
        if not m:
            raise DatasetError(f"{where}: image name {name!r}, expected a name like i01_01_1.bmp")
        ref, kind, level = f"I{m.group(1)}", int(m.group(2)), int(m.group(3))
        if kind not in TID2013_TYPES:
            raise DatasetError(f"{where}: distortion type {kind} in {name!r}, expected 1..24")
        refs.setdefault(ref, (ref_name or f"{ref}.BMP", where))
        items.append(F.item(files, source, name, ["distorted_images", "."], where, ref, dist=kind, level_idx=level,
                           mos=mos, std=std, label=TID2013_CLASSES.get(kind)))
    F.add_refs(items, files, source, refs, ["reference_images", "."])
    info = dict(source=source, layout=layout, direction="higher_better", metadata_file=meta, n_rows=len(rows),
                root=root, dist_names=TID2013_TYPES, **extra)
    return F.finish(items, files, info, check_images)


# ----------------------------------------------------------------------------- authentic / scoring datasets
def _image_dir(root, candidates):
    """The first candidate folder that exists (so one resolution is used throughout), else root itself."""
    return next((d for d in candidates if os.path.isdir(os.path.join(root, d))), ".")


KONIQ_SPLIT = {"0": "training", "1": "validation", "2": "test"}  # pyiqa's split codes (7058 / 1000 / 2015)


def read_koniq10k(root, meta_file=None, check_images=True, resolution=None):
    """KonIQ-10k (10073 in-the-wild images; MOS_zscore about 0..100, higher = better).

    Official: koniq10k_scores_and_distributions.csv (image_name, c1..c5, c_total, MOS (1..5), SD, MOS_zscore,
    SD_zscore; mos = MOS_zscore, std = SD_zscore), or koniq10k_distributions_sets.csv (image_name, c1..c5,
    c_total, MOS (on the 0..100 scale), SD, set); images in 1024x768/ or 512x384/ (`resolution` picks one; by
    default the first present). The official split (set column: training/validation/test) is read from
    koniq10k_distributions_sets.csv when present -> info["split"] {id: set} and item["split"].
    pyiqa: meta_info_KonIQ10kDataset.csv (img_name, mos, std, split with 0/1/2 = training/validation/test)."""
    source = "koniq10k"
    root = F.root(root, source)
    sets_names = ["koniq10k_distributions_sets.csv", "metadata/koniq10k_distributions_sets.csv"]
    layout, meta = F.find_meta(root, source, ["koniq10k_scores_and_distributions.csv"] + sets_names, meta_file)
    image_dir = resolution or _image_dir(root, ["1024x768", "512x384"])
    files, items, extra = F.Files(root), [], {}
    if layout == "official":
        header, rows = F.read_csv(meta, ["image_name"])
        score_col = next((c for c in ("MOS_zscore", "MOS") if c in header), None)
        if score_col is None:
            raise DatasetError(f"{meta}:1: no MOS_zscore or MOS column; found {', '.join(header)}")
        std_col = {"MOS_zscore": "SD_zscore", "MOS": "SD"}[score_col]
        std_col = std_col if std_col in header else None
        sets = {}
        sets_path = meta if "set" in header else next(
            (p for p in (os.path.join(root, s) for s in sets_names) if os.path.isfile(p)), None)
        if sets_path:
            for line, r in F.read_csv(sets_path, ["image_name", "set"])[1]:
                if r["set"] not in ("training", "validation", "test"):
                    raise DatasetError(f"{sets_path}:{line}: set is {r['set']!r}, expected training, validation or test")
                sets[r["image_name"]] = r["set"]
            extra["split_file"] = sets_path
        for line, r in rows:
            where = f"{meta}:{line}"
            extra_item = {"split": sets.get(r["image_name"])} if sets else {}
            items.append(F.item(files, source, r["image_name"], [image_dir], where, F.stem(r["image_name"]),
                               mos=F.num(r[score_col], where, score_col),
                               std=F.opt_num(r[std_col], where, std_col) if std_col else None, **extra_item))
        extra["score_column"] = score_col
    else:
        header, rows = F.read_csv(meta, ["img_name", "mos", "std"])
        # its std is the spread of the 1-5 ratings while mos is MOS_zscore (about 0-100): the range of the 1-5 MOS
        # (from the rating shares c1..c5) is the width that std's scale has in the data (deqa.spread_scale)
        if all(f"c{k}" in header for k in range(1, 6)):
            acr = [sum(k * F.num(r[f"c{k}"], f"{meta}:{line}", f"c{k}") for k in range(1, 6)) for line, r in rows]
            extra["std_scale_range"] = [round(min(acr), 6), round(max(acr), 6)] if acr else None
        for line, r in rows:
            where = f"{meta}:{line}"
            extra_item = {}
            if "split" in header:
                if r["split"] not in KONIQ_SPLIT:
                    raise DatasetError(f"{where}: split is {r['split']!r}, expected 0 (training), 1 (validation) or 2 (test)")
                extra_item["split"] = KONIQ_SPLIT[r["split"]]
            items.append(F.item(files, source, r["img_name"], [image_dir], where, F.stem(r["img_name"]),
                               mos=F.num(r["mos"], where, "mos"), std=F.opt_num(r["std"], where, "std"), **extra_item))
        extra["score_column"] = "mos"
    info = dict(source=source, layout=layout, direction="higher_better", metadata_file=meta, n_rows=len(rows),
                root=root, image_dir=image_dir, **extra)
    items, info = F.finish(items, files, info, check_images)  # its items: duplicates and skipped images left out
    if any(it.get("split") for it in items):
        info["split"] = {it["id"]: it["split"] for it in items if it.get("split")}
        info["split_counts"] = dict(Counter(info["split"].values()))
    return items, info


SPAQ_ATTRIBUTES = ["Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness"]


def read_spaq(root, meta_file=None, check_images=True):
    """SPAQ (11125 smartphone photos; MOS 0..100, higher = better; five attribute scores).

    Official: Annotations/MOS and Image attribute scores.xlsx (columns Image name, MOS, Brightness,
    Colorfulness, Contrast, Noisiness, Sharpness), images in TestImage/. item["attributes"] holds the five
    attribute scores. pyiqa: meta_info_SPAQDataset.csv (Image name, MOS, the same attributes, scene and EXIF
    columns), names joined to SPAQ/TestImage."""
    source = "spaq"
    root = F.root(root, source)
    name = "MOS and Image attribute scores.xlsx"
    layout, meta = F.find_meta(root, source, [f"Annotations/{name}", name], meta_file)
    files, items, rows = F.Files(root), [], []
    if layout == "official":
        for where, r in F.read_xlsx(meta, ["Image name", "MOS"], SPAQ_ATTRIBUTES):
            rows.append((where, r))
    else:
        rows = [(f"{meta}:{line}", r) for line, r in F.read_csv(meta, ["Image name", "MOS"])[1]]
    for where, r in rows:
        image = r["Image name"]
        if image is None or not str(image).strip():
            raise DatasetError(f"{where}: empty 'Image name' cell, expected a file name like 00001.jpg")
        image = str(image).strip()
        attrs = {a: F.opt_num(r.get(a), where, a) for a in SPAQ_ATTRIBUTES if a in r}
        items.append(F.item(files, source, image, ["TestImage", "."], where, F.stem(image), mos=F.num(r["MOS"], where, "MOS"),
                           attributes=attrs))
    info = dict(source=source, layout=layout, direction="higher_better", metadata_file=meta, n_rows=len(rows),
                root=root)
    return F.finish(items, files, info, check_images)


def read_livec(root, meta_file=None, check_images=True):
    """LIVE In the Wild Image Quality Challenge (1169 images incl. 7 training images t1..t7; MOS 0..100,
    higher = better).

    Official: Data/AllImages_release.mat ('AllImages_release'), Data/AllMOS_release.mat ('AllMOS_release'),
    optional Data/AllStdDev_release.mat ('AllStdDev_release'); images in Images/ (t1..t7 in
    Images/trainingImages/). t1..t7 get is_train_only=True (the literature leaves them out of tests;
    split_items keeps them in train). pyiqa: meta_info_LIVEChallengeDataset.csv (img_name, mos, std) joined
    to the LIVEC folder; Images/ and Images/trainingImages/ are searched too."""
    source = "livec"
    root = F.root(root, source)
    layout, meta = F.find_meta(root, source, ["Data/AllMOS_release.mat", "AllMOS_release.mat"], meta_file)
    files, rows, extra = F.Files(root), [], {}
    if layout == "official":
        folder = os.path.dirname(meta)
        names_path, std_path = (os.path.join(folder, f) for f in ("AllImages_release.mat", "AllStdDev_release.mat"))
        if not os.path.isfile(names_path):
            raise DatasetError(f"{source}: {names_path} not found (the release has it next to {os.path.basename(meta)})")
        names = F.mat_strings(F.loadmat(names_path), "AllImages_release", names_path)
        mos = F.mat_numbers(F.loadmat(meta), "AllMOS_release", meta)
        std = F.mat_numbers(F.loadmat(std_path), "AllStdDev_release", std_path) if os.path.isfile(std_path) else None
        for what, arr, path in (("AllMOS_release", mos, meta), ("AllStdDev_release", std, std_path)):
            if arr is not None and len(arr) != len(names):
                raise DatasetError(f"{path}: {what} has {len(arr)} entries, expected {len(names)} (as in {names_path})")
        for i, name in enumerate(names):
            rows.append((f"{names_path} entry {i + 1}", name, mos[i], std[i] if std else None))
        extra = dict(names_file=names_path, std_file=std_path if std else None)
    else:
        for line, r in F.read_csv(meta, ["img_name", "mos"])[1]:
            where = f"{meta}:{line}"
            rows.append((where, r["img_name"], F.num(r["mos"], where, "mos"), F.opt_num(r.get("std"), where, "std")))
    items = [F.item(files, source, name, ["Images", "Images/trainingImages", "."], where, F.stem(name), mos=mos, std=std,
                   is_train_only=bool(re.fullmatch(r"t\d+", F.stem(name))))
             for where, name, mos, std in rows]
    info = dict(source=source, layout=layout, direction="higher_better", metadata_file=meta, n_rows=len(rows),
                root=root, n_train_only=sum(it["is_train_only"] for it in items), **extra)
    return F.finish(items, files, info, check_images)


def read_agiqa3k(root, meta_file=None, check_images=True):
    """AGIQA-3K (2982 AI-generated images; mos_quality about 0..5, higher = better; mos_align for text-image
    alignment). data.csv (name, prompt, adj1, adj2, style, mos_quality, std_quality, mos_align, std_align);
    images next to it or in images/ or AGIQA-3K/ (the folder name is not fixed by the release: assumed).
    meta_file may point at a data.csv elsewhere. item keys prompt, mos_align, std_align are added; ref is the
    image's own name (images sharing a prompt are not grouped)."""
    source = "agiqa3k"
    root = F.root(root, source)
    if meta_file is not None:
        meta_file = os.path.abspath(os.fspath(meta_file))
        if not os.path.isfile(meta_file):
            raise DatasetError(f"{source}: metadata file {meta_file} not found")
        layout, meta = "official", meta_file
    else:
        layout, meta = F.find_meta(root, source, ["data.csv"])
    header, rows = F.read_csv(meta, ["name", "mos_quality"])
    files, items = F.Files(root), []
    for line, r in rows:
        where = f"{meta}:{line}"
        items.append(F.item(files, source, r["name"], ["images", "AGIQA-3K", "AGIQA-3k", "."], where, F.stem(r["name"]),
                           mos=F.num(r["mos_quality"], where, "mos_quality"),
                           std=F.opt_num(r.get("std_quality"), where, "std_quality"),
                           prompt=r.get("prompt"), mos_align=F.opt_num(r.get("mos_align"), where, "mos_align"),
                           std_align=F.opt_num(r.get("std_align"), where, "std_align")))
    info = dict(source=source, layout=layout, direction="higher_better", metadata_file=meta, n_rows=len(rows),
                root=root, score_column="mos_quality")
    return F.finish(items, files, info, check_images)


# source name -> (prepare_data.py's flag for its folder, what it is); every one scores, the first four also distort
DATASETS = {"live": ("live", "LIVE IQA (release 2)"), "csiq": ("csiq", "CSIQ"), "kadid10k": ("kadid", "KADID-10k"),
            "tid2013": ("tid2013", "TID2013"), "koniq10k": ("koniq", "KonIQ-10k"), "spaq": ("spaq", "SPAQ"),
            "livec": ("livec", "LIVE Challenge"), "agiqa3k": ("agiqa", "AGIQA-3K")}
DISTORTION_SOURCES = ("live", "csiq", "kadid10k", "tid2013")
READERS = {"live": read_live, "csiq": read_csiq, "kadid10k": read_kadid10k, "tid2013": read_tid2013,
           "koniq10k": read_koniq10k, "spaq": read_spaq, "livec": read_livec, "agiqa3k": read_agiqa3k}


# ----------------------------------------------------------------------------- split and scores
def reference_images(items):
    """{(source, ref): path of the reference image} from a reader's reference items (LIVE, CSIQ, KADID-10k,
    TID2013); records of distorted images carry it as `ref_image` for full-reference prompting."""
    return {(it["source"], it["ref"]): it["image"] for it in items if it["is_ref"]}


def split_items(items, test_frac=0.2, by="ref", seed=0, per_source=True):
    """Seeded train/test split, done per source so each dataset is split test_frac on its own (per_source=False: once
    over all items as one pool, as the distortion paper splits "the mix" of its four sets).

    by="ref": all items sharing (source, ref) fall on the same side; the references are shuffled and the
    number taken for test is the one whose item count comes closest to test_frac of the source's items
    (at least one group on each side when there are two or more). by="random": plain per-item split.
    Items with is_train_only (LIVE Challenge t1..t7) always go to train. Both lists keep the input order."""
    if by not in ("ref", "random"):
        raise ValueError(f"split by {by!r}: expected 'ref' or 'random'")
    if not 0.0 <= test_frac <= 1.0:
        raise ValueError(f"test_frac {test_frac} must be in [0, 1]")
    test_idx = set()
    sources = sorted({it["source"] for it in items}) if per_source else [None]
    for source in sources:
        idx = [i for i, it in enumerate(items) if source in (None, it["source"]) and not it.get("is_train_only")]
        rng = random.Random(f"{seed}:{source}")
        if by == "ref":
            groups = {}
            for i in idx:
                ref = items[i]["ref"] if items[i]["ref"] is not None else items[i]["id"]
                groups.setdefault(str(ref) if per_source else f"{items[i]['source']}/{ref}", []).append(i)
            order = sorted(groups)
        else:
            groups = {str(i): [i] for i in idx}
            order = [str(i) for i in idx]
        rng.shuffle(order)
        target, best_k, best_err, total = test_frac * len(idx), 0, float("inf"), 0
        lo, hi = (1, len(order) - 1) if len(order) >= 2 and 0 < test_frac < 1 else (0, len(order))
        for k in range(len(order) + 1):
            if k:
                total += len(groups[order[k - 1]])
            if lo <= k <= hi and abs(total - target) < best_err - 1e-9:
                best_k, best_err = k, abs(total - target)
        for key in order[:best_k]:
            test_idx.update(groups[key])
    train = [it for i, it in enumerate(items) if i not in test_idx]
    test = [it for i, it in enumerate(items) if i in test_idx]
    return train, test


def score_level(s, m, M):
    """DESIGN.md: L(s) = l_i if m + (i-1)(M-m)/5 < s <= m + i(M-m)/5 (higher = better); s == m -> bad."""
    for i, name in enumerate(LEVELS, 1):
        if s <= m + i * (M - m) / 5:
            return name
    return LEVELS[-1]


def norm_scores(items, info):
    """Fills item["mos_norm"] in [0, 1] (higher = better; DMOS flipped) and item["level"] (LEVELS) in place.

    m, M: the dataset's score range, info["score_range"] (all scored items as read), or the min/max of the
    given scored items when info has none. `info` is one reader's info, or {source: info} for mixed items.
    Items without mos get None for both. Returns items."""
    infos = {info["source"]: info} if "direction" in info else info
    for source in sorted({it["source"] for it in items}):
        inf = infos.get(source)
        if inf is None:
            raise ValueError(f"norm_scores: no info for source {source!r}")
        part = [it for it in items if it["source"] == source]
        scores = [it["mos"] for it in part if it["mos"] is not None]
        m, M = inf.get("score_range") or ([min(scores), max(scores)] if scores else [None, None])
        if scores and not M > m:
            raise DatasetError(f"{source}: all scores are equal ({m}); cannot map them to levels")
        flip = inf["direction"] == "lower_better"
        for it in part:
            if it["mos"] is None:
                it["mos_norm"], it["level"] = None, None
                continue
            s = m + M - it["mos"] if flip else it["mos"]   # higher-is-better orientation, same range [m, M]
            it["mos_norm"] = min(1.0, max(0.0, (s - m) / (M - m)))
            it["level"] = score_level(s, m, M)
    return items
