"""Every command the README and docs/ show names a script, subcommand, config file and flags that exist.

The commands on the demo run in dev/demo_results.sh; those on real data need datasets and checkpoints this machine
cannot fetch, so here each one is parsed: `python SCRIPT [SUBCOMMAND] ARGS` (and `torchrun ... train.py ARGS`) from
code blocks and backticks, continuation lines joined, `&&` chains split. A flag that the script does not take, a
subcommand it does not have, or a config file that is not in the repo fails, naming the file and the command."""
import argparse
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
HISTORY = {"demo_history.md"}  # the log of past runs: its commands are the history's, not the current interface


def doc_commands(path):
    """(line number, command) for every python/torchrun command in a markdown file."""
    text = path.read_text()
    found = []
    in_block = False
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        start = i + 1
        if line.strip().startswith("```"):
            in_block = not in_block
            i += 1
            continue
        if in_block:
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            body = re.sub(r"^\s*\$\s*", "", line)
            found += [(start, c) for c in split_chain(strip_comment(body))]
        else:
            for snippet in re.findall(r"`([^`]+)`", line):
                found += [(start, c) for c in split_chain(snippet)]
        i += 1
    return [(n, c) for n, c in found if re.match(r"(python |torchrun )", c)]


def strip_comment(line):
    out, quote = [], None
    for k, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            break
        out.append(ch)
    return "".join(out).strip()


def split_chain(text):
    return [c.strip() for c in re.split(r"&&|;", text) if c.strip()]


@lru_cache(maxsize=None)
def train_keys(script="train.py"):
    src = (ROOT / script).read_text()
    block = re.search(r"^# -+ config\b.*?\n(.*?)^# -+$", src, flags=re.M | re.S).group(1)
    return frozenset(re.findall(r"^(\w+) = ", block, flags=re.M))


@lru_cache(maxsize=None)
def subcommand_flags(script, sub):
    """The option strings of `script sub` (evaluate.py / analyze.py), from the parser its COMMANDS entry builds."""
    sys.path.insert(0, str(ROOT))
    module = __import__(script[:-3])
    if sub not in module.COMMANDS:
        return None
    p = argparse.ArgumentParser()
    module.COMMANDS[sub][1](p)
    return frozenset(s for a in p._actions for s in a.option_strings)


@lru_cache(maxsize=None)
def help_flags(script):
    """The option strings a plain argparse script prints with --help."""
    r = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{script} --help failed: {r.stderr[-500:]}"
    return frozenset(re.findall(r"(--[a-zA-Z0-9_]+)", r.stdout))


def problems(cmd):
    """What is wrong with one command (empty: nothing)."""
    words = shlex.split(cmd)
    if words[0] == "torchrun":
        words = ["python"] + words[next(k for k, w in enumerate(words) if w.endswith(".py")):]
    words = words[1:]
    if not words or words[0] in ("-m", "-c", "setup.py") or not words[0].endswith(".py"):
        return []
    script, args = words[0], words[1:]
    if not (ROOT / script).is_file():
        return [f"no script {script}"]
    flags = [a.split("=", 1)[0] for a in args if a.startswith("--") and " " not in a]  # "--fsdp true": a value
    missing = [f"config file {a} not found" for a in args if re.fullmatch(r"config/\w+\.py", a) and not (ROOT / a).is_file()]
    if script in ("train.py", "train_grpo.py"):
        return [f for f in flags if f[2:] not in train_keys(script)] + missing
    if missing:
        return missing
    if script in ("evaluate.py", "analyze.py"):
        if not args or args[0] == "--help":
            return []
        known = subcommand_flags(script, args[0])
        if known is None:
            return [f"{script} has no subcommand {args[0]}"]
        return [f for f in flags if f not in known and f != "--help"]
    known = help_flags(script)
    return [f for f in flags if f not in known and f != "--help"]


def all_commands():
    return [(p.relative_to(ROOT), n, c) for p in DOCS if p.name not in HISTORY for n, c in doc_commands(p)]


def test_the_extractor_finds_the_commands():
    cmds = all_commands()
    assert len(cmds) > 100
    readme = [c for p, _, c in cmds if str(p) == "README.md"]
    assert any(c.startswith("python train.py config/demo.py --out out/demo") for c in readme)
    assert any(c.startswith("torchrun --standalone --nproc_per_node=4 train.py config/qalign_koniq.py") for c in readme)
    # and a command with a flag nobody takes is caught
    assert problems("python evaluate.py score --no_such_flag 1") == ["--no_such_flag"]
    assert problems("python train.py config/nope.py --lr 1") == ["config file config/nope.py not found"]
    assert problems("python analyze.py no-such-analysis") == ["analyze.py has no subcommand no-such-analysis"]


def test_every_documented_command_names_real_flags():
    bad = [f"{p}:{n}: {c}\n    {', '.join(why)}" for p, n, c in all_commands() for why in [problems(c)] if why]
    assert not bad, "commands in the docs that the scripts would refuse:\n" + "\n".join(bad)


def slug(heading):
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_docs_resolves():
    bad = []
    for p in DOCS:
        for n, line in enumerate(p.read_text().splitlines(), 1):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"https?:", target):
                    continue
                file, _, anchor = target.partition("#")
                dest = (p.parent / file).resolve() if file else p
                if not dest.exists():
                    bad.append(f"{p.relative_to(ROOT)}:{n}: {target}: no such file")
                elif anchor and dest.suffix == ".md":
                    anchors = {slug(h) for h in re.findall(r"^#+ (.*)$", dest.read_text(), flags=re.M)}
                    if anchor not in anchors:
                        bad.append(f"{p.relative_to(ROOT)}:{n}: {target}: no heading with that anchor")
    assert not bad, "\n".join(bad)
