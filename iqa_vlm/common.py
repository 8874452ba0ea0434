"""Small helpers shared by the scripts: atomic file writes, config overrides, DDP setup, rank-0 printing.

Kept deliberately small; every script imports only what it uses.
"""
import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the package sits beside the entry scripts
EVAL_DIR = "eval"  # a run's evaluations go to RUN/eval/, which train.py --overwrite removes with the run it replaces


def entry_script(name):
    """Path of an entry script (train.py, evaluate.py) for a sweep that launches it as a subprocess."""
    return os.path.join(REPO_ROOT, name)


def run_command(cmd):
    """Run one command of a sweep, echoing it; a failure stops the sweep."""
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def launcher(torchrun=0):
    """The command that starts train.py: this Python, or torchrun with `torchrun` processes."""
    return [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
                               if torchrun else [])


def train_then_evaluate(run, train_args, evals, torchrun=0, skip_trained=False):
    """One point of a sweep (ablation, score losses, mix ratio): train.py into `run` with `train_args`, then each
    evaluate.py subcommand of `evals` ([(subcommand, [arguments])]) on it. skip_trained: reuse a finished run's
    weights. -> {subcommand: the evaluation's JSON (RUN/eval_SUBCOMMAND.json)}."""
    if not (skip_trained and os.path.isfile(os.path.join(run, "trainable.safetensors"))):
        run_command(launcher(torchrun) + [entry_script("train.py"), *train_args, "--out", run])
    return {sub: evaluate_only(sub, ["--ckpt", run, *args], os.path.join(run, EVAL_DIR)) for sub, args in evals}


def evaluate_only(sub, args, out):
    """evaluate.py SUB with `args`, writing into `out` (RUN/eval for a --ckpt, the --out given with a --model).
    -> its JSON, OUT/eval_SUB.json."""
    run_command([sys.executable, entry_script("evaluate.py"), sub, *args])
    with open(os.path.join(out, f"eval_{sub}.json")) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- atomic writes
# An interrupted run must never leave a half-written file that looks complete: write to a temp
# file in the same folder (same filesystem, so os.replace is atomic), fsync, then rename.

UMASK = os.umask(0o022)  # reading the umask means setting it: put it straight back
os.umask(UMASK)


def atomic_write(path, data):
    """Write str or bytes to `path` atomically."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600 files; outputs are as readable as the user's umask allows
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_LOCKS = {}


def hold_lock(path, who, shared=False):
    """A lock on the file `path`, held until the process exits (the OS drops it then, even after kill -9, so a crash never
    leaves a stale lock): exclusive for a writer, shared for a reader (readers share it; a writer and anyone else
    exclude each other). A refused caller stops, naming the last writer that held it. A reader that cannot create or
    open the lock file (a read-only mount, another user's folder) reads without it, and says so."""
    import fcntl
    import socket
    path = os.path.abspath(path)
    if path in _LOCKS:
        return
    try:
        f = open(path, "a+")
    except OSError as e:
        try:
            f = open(path, "r")  # flock works on a file opened for reading
        except OSError:
            if shared:
                print(f"{who}: note: cannot lock {path} ({e.strerror}); reading without a lock", file=sys.stderr)
                return
            raise SystemExit(f"{who}: cannot lock {path} ({e.strerror})") from None
    try:
        fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise SystemExit(f"{who}: {path} is held by another process, which is using that folder now"
                         f"{' (the last writer there: ' + holder + ')' if holder else ''}; retry when it has ended, or "
                         f"choose another folder") from None
    if not shared and f.mode == "a+":
        f.seek(0)
        f.truncate()
        f.write(f"{who} pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
    _LOCKS[path] = f


def folder_lock(folder, who, shared=False):
    """The one lock of a folder, PARENT/.NAME.lock beside it (a folder swapped whole keeps it): prepare_data.py --out and
    train.py --out hold it exclusively, train.py --data and evaluate.py --ckpt shared, so no one writes a folder another
    process reads or writes."""
    parent, base = os.path.split(os.path.realpath(folder))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"{who}: cannot make {parent} ({e.strerror})") from None
    hold_lock(os.path.join(parent, f".{base}.lock"), who, shared)


def swap_in(tmp, out):
    """Makes the finished folder `tmp` (beside `out`) the folder `out` at once: an old `out` is renamed away first, then
    removed, so a reader finds the old folder or the new one, never a mix."""
    parent, base = os.path.split(os.path.realpath(out))
    old = None
    if os.path.isdir(out):
        old = tempfile.mkdtemp(dir=parent, prefix=f".{base}.old-")
        os.replace(out, old)
    os.replace(tmp, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def release_folder_lock(folder):
    """Drops this process's lock of `folder` (a prepare called as a library is done with its folder; a script's locks
    simply end with it)."""
    parent, base = os.path.split(os.path.realpath(folder))
    f = _LOCKS.pop(os.path.join(parent, f".{base}.lock"), None)
    if f:
        f.close()


def check_writable(folder, who):
    """An unwritable output folder is an error now, before the work, not after it."""
    try:
        os.makedirs(folder, exist_ok=True)
        atomic_write(os.path.join(folder, ".write_test"), b"")
        os.unlink(os.path.join(folder, ".write_test"))
    except OSError as e:
        raise SystemExit(f"{who}: cannot write into {folder} ({e.strerror})") from None


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported on first use: matplotlib is slow to import)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def atomic_write_png(path, fig, dpi=110):
    """Save a matplotlib figure as PNG atomically, and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    atomic_write(path, buf.getvalue())


def write_checkpoint(out, files, name):
    """One checkpoint made current at once: `files` ({file name: bytes}) are written whole into OUT/name.partial, which is
    renamed OUT/name, and then the link OUT/current is switched to it by one atomic replace. OUT/<file name> are links
    through `current`, so every reader sees one checkpoint's files, never a mix; a crash at any point leaves the previous
    checkpoint current (a left-over .partial folder is never read, and goes at the next save). Older checkpoints go
    once the switch is made."""
    folder, tmp = os.path.join(out, name), os.path.join(out, name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:  # a full disk: the half-written folder goes at once, so it does not keep the disk full for the next try
        os.makedirs(tmp)
        for file, data in files.items():
            with open(os.path.join(tmp, file), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(tmp)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for file in files:  # the links first: once `current` exists, the folder is recognisably a run
        path = os.path.join(out, file)
        if not os.path.islink(path):  # a plain file of a run written before checkpoints were folders
            if os.path.exists(path):
                os.unlink(path)
            os.symlink(os.path.join("current", file), path)
    link = os.path.join(out, ".current.partial")
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(name, link)
    os.replace(link, os.path.join(out, "current"))  # the switch
    fsync_dir(out)
    for other in os.listdir(out):  # only this writer's names: a user's copy (checkpoint-keep) stays
        if CHECKPOINT_NAME.match(other) and other != name and os.path.isdir(os.path.join(out, other)):
            shutil.rmtree(os.path.join(out, other), ignore_errors=True)


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_NAME = re.compile(r"^checkpoint-\d{8}-\d+(\.partial)?$")


def atomic_write_json(path, obj):
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_jsonl(path, records):
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_json(path):
    """A JSON file; a malformed one is an error naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise SystemExit(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def read_jsonl(path):
    """Read a JSONL file; a malformed line is an error naming file and line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return records


# ----------------------------------------------------------------------------- config overrides
def boolean(raw):
    """An argparse type: booleans are spelled the same in every entry script (true/false; also 1/0, yes/no)."""
    if str(raw).lower() not in ("1", "0", "true", "false", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {raw!r}")
    return str(raw).lower() in ("1", "true", "yes")


def apply_overrides(config, argv):
    """nanoGPT-style configurator: `config` is a dict of defaults (train.py's config block, nothing else: module
    constants are not settable).

    argv items: a config file (`config/foo.py`, executed, may set any known key with a value of that key's type), or
    `--key value` / `--key=value`, cast to the default's type (an int key takes no 8.5; a text key no None). Unknown
    keys and wrong types are errors naming the key, and the file and line for a config file. -> the resolved config."""
    i, known = 0, {k for k, v in config.items() if not k.startswith("_") and isinstance(v, (int, float, bool, str, type(None)))}
    kinds = {bool: "true or false", int: "an integer", float: "a number", str: "text", type(None): "text"}

    def unknown(key, where):
        raise SystemExit(f"{where}unknown config key {key}; known keys: {', '.join(sorted(known))}")

    def from_text(key, raw):
        default = config[key]
        if isinstance(default, bool):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise SystemExit(f"--{key} expects true/false, got {raw!r}")
            return boolean(raw)
        if isinstance(default, (int, float)):
            try:
                return type(default)(raw)
            except ValueError:
                raise SystemExit(f"--{key} expects {kinds[type(default)]}, got {raw!r}") from None
        if raw.lower() == "none":
            raise SystemExit(f"--{key} None: give '' for none (None would be taken as a name)")
        return raw

    def from_file(key, value, where):
        default = config[key]
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not (type(value) is type(default) or (default is None and isinstance(value, str))):
            raise SystemExit(f"{where}{key} = {value!r}: expected {kinds[type(default)]} (like its default {default!r})")
        return value

    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            if "=" in arg:
                key, raw = arg[2:].split("=", 1)
            else:
                if i + 1 >= len(argv):
                    raise SystemExit(f"{arg} needs a value")
                key, raw = arg[2:], argv[i + 1]
                i += 1
            if key not in known:
                unknown(f"--{key}", "")
            config[key] = from_text(key, raw)
        else:
            if not os.path.isfile(arg):
                raise SystemExit(f"config file {arg} not found")
            file_cfg = run_config_file(arg)
            for key, (value, line) in file_cfg.items():
                where = f"{arg}:{line}: "
                if key not in known:
                    unknown(key, where)
                config[key] = from_file(key, value, where)
        i += 1
    return {k: config[k] for k in sorted(known)}


def run_config_file(path):
    """Executes a config file -> {name: (value, line that set it)} of its public names; an error in it names the file
    and line, not <string>."""
    import ast
    import traceback
    src = open(path, encoding="utf-8").read()
    try:
        tree = ast.parse(src, path)
        values = {}
        exec(compile(tree, path, "exec"), {}, values)
    except SyntaxError as e:
        raise SystemExit(f"{path}:{e.lineno}: {e.msg}") from None
    except Exception as e:  # noqa: BLE001 - whatever the file raises, named with its line
        line = next((f.lineno for f in reversed(traceback.extract_tb(e.__traceback__)) if f.filename == path), "?")
        raise SystemExit(f"{path}:{line}: {type(e).__name__}: {e}") from None
    lines = {t.id: node.lineno for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
             for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}
    return {k: (v, lines.get(k, "?")) for k, v in values.items() if not k.startswith("_")
            and not callable(v) and type(v).__name__ != "module"}


def run_subcommand(doc, commands, argv=None):
    """An entry script with subcommands: commands = {name: (function, add_arguments(parser), one-line help)}; the
    chosen function is called with the parsed values as keywords (plain values, never the namespace)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, (fn, add_arguments, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=fn.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(p)
    args = vars(ap.parse_args(argv))
    return commands[args.pop("command")][0](**args)


# ----------------------------------------------------------------------------- distributed
def setup_distributed():
    """Reads torchrun's environment. Returns (ddp, rank, local_rank, world_size, device)."""
    import torch
    import torch.distributed as dist
    if int(os.environ.get("RANK", -1)) == -1:
        return False, 0, 0, 1, "cuda" if torch.cuda.is_available() else "cpu"
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        return True, rank, local_rank, world, f"cuda:{local_rank}"
    dist.init_process_group("gloo")
    return True, rank, local_rank, world, "cpu"
