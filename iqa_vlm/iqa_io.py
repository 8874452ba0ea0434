"""File plumbing for the dataset readers (iqa_datasets.py): metadata discovery (official release first, then
IQA-PyTorch's meta_info CSVs), CSV / whitespace-table / xlsx / .mat parsing whose errors name file, line and field,
case-insensitive image lookup, and the checks every reader finishes with.
"""
import csv
import math
import os
from collections import Counter

from iqa_vlm.data import LABELS


class DatasetError(ValueError):
    """A dataset on disk is not as expected; the message names the file (line/row) and what was expected."""


PYIQA_META = {"live": "meta_info_LIVEIQADataset.csv", "csiq": "meta_info_CSIQDataset.csv",
              "kadid10k": "meta_info_KADID10kDataset.csv", "tid2013": "meta_info_TID2013Dataset.csv",
              "koniq10k": "meta_info_KonIQ10kDataset.csv", "spaq": "meta_info_SPAQDataset.csv",
              "livec": "meta_info_LIVEChallengeDataset.csv"}


def root(root, source):
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.isdir(root):
        raise DatasetError(f"{source}: dataset folder {root} not found")
    return root


def find_meta(root, source, official, meta_file=None):
    """(layout, path) of the metadata: meta_file (a pyiqa CSV) if given, else the first official file present
    (relative names in `official`), else the pyiqa CSV next to or above root."""
    if meta_file is not None:
        meta_file = os.path.abspath(os.fspath(meta_file))
        if not os.path.isfile(meta_file):
            raise DatasetError(f"{source}: metadata file {meta_file} not found")
        return "pyiqa", meta_file
    looked = []
    for rel in official:
        path = os.path.join(root, rel)
        looked.append(path)
        if os.path.isfile(path):
            return "official", path
    name = PYIQA_META.get(source)
    if name:
        parent = os.path.dirname(root)
        for folder in (root, os.path.join(root, "meta_info"), os.path.join(parent, "meta_info"), parent):
            path = os.path.join(folder, name)
            looked.append(path)
            if os.path.isfile(path):
                return "pyiqa", path
    what = "official release, then IQA-PyTorch layout" if name else "official release"
    raise DatasetError(f"{source}: no metadata found for {root}; looked for ({what}): {', '.join(looked)}"
                       + ("; or pass meta_file=PATH to a pyiqa meta_info CSV" if name else ""))


def num(value, where, column):
    """A finite float from a metadata cell, or a DatasetError naming where it came from."""
    try:
        v = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: {column} is {value!r}, expected a number") from None
    if not math.isfinite(v):
        raise DatasetError(f"{where}: {column} is {value!r}, expected a finite number")
    return v


def opt_num(value, where, column):
    return None if value is None or (isinstance(value, str) and not value.strip()) else num(value, where, column)


def read_csv(path, required):
    """Header CSV -> (header, [(line, {column: text})]); checks columns and every row's field count.
    A repeated column name (SPAQ has two 'Brightness') maps to its first occurrence."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DatasetError(f"{path}: empty file, expected a header line with columns {', '.join(required)}")
            header = [h.strip() for h in header]
            missing = [c for c in required if c not in header]
            if missing:
                raise DatasetError(f"{path}:1: missing column(s) {', '.join(missing)}; expected columns "
                                   f"{', '.join(required)}, found {', '.join(header)}")
            index = {}
            for i, h in enumerate(header):
                index.setdefault(h, i)
            rows = []
            for fields in reader:
                if not any(x.strip() for x in fields):
                    continue
                if len(fields) != len(header):
                    raise DatasetError(f"{path}:{reader.line_num}: expected {len(header)} fields "
                                       f"({','.join(header)}), found {len(fields)}")
                rows.append((reader.line_num, {h: fields[i].strip() for h, i in index.items()}))
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    return header, rows


def read_table(path, n_fields, what):
    """Whitespace-separated text without header -> [(line, fields)], each line with exactly n_fields fields."""
    rows = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for line_no, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != n_fields:
                    raise DatasetError(f"{path}:{line_no}: expected {n_fields} fields ({what}), found "
                                       f"{len(fields)}: {line.strip()!r}")
                rows.append((line_no, fields))
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a text file ({e.reason})") from None
    return rows


def read_xlsx(path, columns, optional=(), sheet=None):
    """Rows of the first sheet (or `sheet`) holding a header row with all `columns` (case-insensitive), as
    [(where, {name: value})] for `columns` + `optional`; fully empty rows are skipped."""
    import openpyxl
    try:
        wb = openpyxl.load_workbook(path, data_only=True)
    except Exception as e:  # zipfile.BadZipFile, KeyError, InvalidFileException ...
        raise DatasetError(f"{path}: cannot open as an Excel workbook ({type(e).__name__}: {e})") from None
    want = [c.lower() for c in columns]
    sheets = sorted(wb.worksheets, key=lambda ws: ws.title != sheet)  # the named sheet first, if any
    for ws in sheets:
        rows = list(ws.iter_rows(min_row=1, values_only=True))
        for hi, row in enumerate(rows[:50]):
            names = [str(v).strip().lower() if v is not None else "" for v in row]
            if all(c in names for c in want):
                index = {c: names.index(c.lower()) for c in list(columns) + [o for o in optional if o.lower() in names]}
                out = []
                for rno, values in enumerate(rows[hi + 1:], hi + 2):
                    cells = {c: (values[i] if i < len(values) else None) for c, i in index.items()}
                    if all(v is None or (isinstance(v, str) and not v.strip()) for v in cells.values()):
                        continue
                    out.append((f"{path} (sheet {ws.title!r}, row {rno})", cells))
                return out
    raise DatasetError(f"{path}: no sheet has a header row with columns {', '.join(columns)} "
                       f"(sheets: {', '.join(wb.sheetnames)})")


def loadmat(path):
    import scipy.io
    try:
        return scipy.io.loadmat(path)
    except Exception as e:
        raise DatasetError(f"{path}: cannot read as a MATLAB .mat file ({type(e).__name__}: {e})") from None


def mat_field(mat, key, path):
    if key not in mat:
        found = ", ".join(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"{path}: no variable {key!r} (found: {found})")
    return mat[key]


def mat_numbers(mat, key, path):
    """A numeric MATLAB variable as a flat list of finite floats (a NaN would become a label; it is an error)."""
    import numpy as np
    arr = mat_field(mat, key, path)
    try:
        values = [float(v) for v in np.asarray(arr, dtype=float).ravel()]
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: variable {key!r} is not numeric") from None
    bad = [f"entry {i} is {v}" for i, v in enumerate(values, 1) if not math.isfinite(v)]
    if bad:
        raise DatasetError(f"{path}: variable {key!r}: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} "
                           f"({len(bad)} not finite), expected finite numbers")
    return values


def mat_strings(mat, key, path):
    """A MATLAB cell array of strings (any shape, nested 1-element arrays) -> list of str."""
    import numpy as np
    out = []
    for i, v in enumerate(np.asarray(mat_field(mat, key, path), dtype=object).ravel(), 1):
        while isinstance(v, np.ndarray) and v.size == 1 and v.dtype.kind not in "US":
            v = v.ravel()[0]
        if isinstance(v, np.ndarray) and v.dtype.kind in "US":
            v = "".join(str(x) for x in v.ravel())
        if not isinstance(v, str) or not v.strip():
            raise DatasetError(f"{path}: {key} entry {i} is {v!r}, expected a file name")
        out.append(v.strip())
    return out


class Files:
    """Looks up listed names below root: exact name first, then ignoring case; one listdir per folder."""

    def __init__(self, root):
        self.root, self.listings, self.case_matches = root, {}, 0

    def find(self, name, subdirs=(".",)):
        head, base = os.path.split(name.replace("\\", "/"))
        for sub in subdirs:
            folder = os.path.normpath(os.path.join(self.root, sub, head))
            if folder not in self.listings:
                try:
                    names = os.listdir(folder)
                except OSError:
                    names = []
                self.listings[folder] = (set(names), {n.lower(): n for n in names})
            exact, lower = self.listings[folder]
            if base in exact:
                return os.path.join(folder, base)
            if base.lower() in lower:
                self.case_matches += 1
                return os.path.join(folder, lower[base.lower()])
        return None


def item(files, source, name, dirs, where, ref, dist=None, level_idx=None, mos=None, std=None, label=None,
          is_ref=False, **extra):
    """One item; `_name`/`_dirs`/`_where` say what was listed where, for error messages (removed by finish)."""
    it = dict(image=files.find(name, dirs), id=None, source=source, ref=ref, dist=dist, level_idx=level_idx,
              mos=mos, std=std, label=label, is_ref=is_ref)
    it.update(extra)
    it.update(_name=name, _dirs=dirs, _where=where)
    return it


def skipped_note(info):
    """What a reader left out, for the line prepare_data prints per dataset ('' when nothing)."""
    parts = [f"{len(info['bad_images'])} undecodable images left out (listed in meta.json)"] if info.get("bad_images") else []
    parts += [f"{info['duplicate_rows']} repeated rows read once"] if info.get("duplicate_rows") else []
    return "; " + "; ".join(parts) if parts else ""


def problems(problems, what):
    if len(problems) == 1:
        raise DatasetError(problems[0])
    shown = problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])
    raise DatasetError(f"{len(problems)} {what}:\n  " + "\n  ".join(shown))


# The scale each dataset documents for its score column; a score outside it is a typo or a misread column (one MOS of
# 41350 put 143 of 144 KADID images in `bad`, since levels are cut between the scores' min and max). LIVE's DMOS is a
# difference score on a 0..100 scale whose released values spill past both ends, so it gets +-20: our choice.
SCORE_SCALE = {"live": (-20.0, 120.0), "csiq": (0.0, 1.0), "kadid10k": (1.0, 5.0), "tid2013": (0.0, 9.0),
               "koniq10k": (0.0, 100.0), "spaq": (0.0, 100.0), "livec": (0.0, 100.0), "agiqa3k": (0.0, 5.0)}


def decode_error(path):
    """None if PIL decodes the whole image, else the error as text (a half-downloaded file passes a header check)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.load()
        return None
    except Exception as e:  # OSError (truncated), UnidentifiedImageError, SyntaxError (bad PNG chunk), ...
        return f"{type(e).__name__}: {e}"


def decode_all(paths, what):
    """{path: error text} for the images PIL cannot decode, over a thread pool (PIL releases the GIL while it
    decodes), with progress on stderr: KonIQ's 10k 1024x768 JPEGs take ~2 min on one core."""
    import sys
    import time
    from concurrent.futures import ThreadPoolExecutor
    bad, t0, tty = {}, time.time(), sys.stderr.isatty()
    last = t0
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, (path, err) in enumerate(zip(paths, pool.map(decode_error, paths)), 1):
            if err:
                bad[path] = err
            if time.time() - last > (1 if tty else 30) or i == len(paths):  # a log file gets a line every 30 s
                last = time.time()
                print(f"{chr(13) if tty else ''}{what}: decoded {i}/{len(paths)} images ({len(bad)} bad) {last - t0:.0f}s",
                      end="" if tty and i < len(paths) else "\n", file=sys.stderr)
    return bad


def finish(items, files, info, check_images):
    """The checks every reader ends with, then ids and counts in info. Errors (DatasetError naming file and line): no
    rated image at all; a listed image missing; a score outside the dataset's scale (SCORE_SCALE); one image listed twice
    with different scores (listed twice with the same score: one kept, counted in info["duplicate_rows"]); an image PIL
    cannot fully decode (check_images=True; "skip": dropped and listed in info["bad_images"]; False: not opened)."""
    source, meta = info["source"], info.get("metadata_file")
    if not any(it["mos"] is not None for it in items):
        raise DatasetError(f"{meta}: no rated image in it (0 records); expected the {source} metadata with one row per image")
    missing = []
    for it in items:
        if it["image"] is None:
            looked = ", ".join(os.path.normpath(os.path.join(files.root, d)) for d in it["_dirs"])
            kind = "reference image" if it["is_ref"] else "image"
            missing.append(f"{it['_where']}: {kind} {it['_name']!r} is listed but not found (looked in {looked})")
    if missing:
        problems(missing, "listed images are missing")
    lo, hi = SCORE_SCALE[source]
    out_of_scale = [f"{it['_where']}: score {it['mos']} is outside {source}'s scale [{lo:g}, {hi:g}]"
                    for it in items if it["mos"] is not None and not lo <= it["mos"] <= hi]
    if out_of_scale:
        problems(out_of_scale, f"scores are outside {source}'s scale")
    first, kept, conflicts = {}, [], []
    for it in items:
        seen = first.get(it["image"])
        if seen is None:
            first[it["image"]] = it
            kept.append(it)
        elif seen["mos"] != it["mos"]:
            conflicts.append(f"{it['_where']}: {it['_name']!r} has score {it['mos']}, but {seen['_where']} gives it {seen['mos']}")
    if conflicts:
        problems(conflicts, "images are listed twice with different scores")
    info["duplicate_rows"] = len(items) - len(kept)
    items = kept
    if check_images:
        bad = decode_all([it["image"] for it in items], source)
        failed = [f"{it['_where']}: cannot decode image {it['image']} ({bad[it['image']]})" for it in items if it["image"] in bad]
        if failed and check_images != "skip":
            problems(failed, "listed images cannot be decoded (pass --skip_bad_images true to leave them out, counted)")
        info["bad_images"] = failed
        items = [it for it in items if it["image"] not in bad]
    for it in items:
        rel = os.path.relpath(it["image"], files.root).replace(os.sep, "/")
        it["id"] = f"{it['source']}/{rel}"
        for k in ("_name", "_dirs", "_where"):
            del it[k]
    scores = [it["mos"] for it in items if it["mos"] is not None]
    excluded = Counter(it["dist"] for it in items if it["label"] is None and not it["is_ref"] and it["dist"] is not None)
    info.update(
        score_range=[min(scores), max(scores)] if scores else None,
        excluded=dict(sorted(excluded.items(), key=lambda kv: (isinstance(kv[0], str), kv[0]))),
        n_items=len(items), n_scored=len(scores), n_refs=sum(it["is_ref"] for it in items),
        labels=dict(sorted(Counter(it["label"] for it in items if it["label"]).items(), key=lambda kv: LABELS.index(kv[0]))),
        case_insensitive_matches=files.case_matches)
    return items, info


def add_refs(items, files, source, refs, dirs):
    """Reference images (label clean, no score) in order of first mention; refs: {ref id: (name, where)}."""
    for ref, (name, where) in refs.items():
        items.append(item(files, source, name, dirs, where, ref, label="clean", is_ref=True))


def stem(name):
    return os.path.splitext(os.path.basename(name))[0]


