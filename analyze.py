"""Look inside fine-tuned VLMs: one subcommand per analysis, each writing a JSON of its numbers and a PNG.

    python analyze.py --help                 # lists the analyses

Each analysis is one section below: a function `cmd_<name>(args)`, a function adding its arguments, and
a line `COMMANDS["name"] = (cmd_<name>, add_<name>_args, "one-line help")`.
"""
import argparse

# ----------------------------------------------------------------------------- analyses
# (each section registers itself: COMMANDS["name"] = (function, add_arguments, one-line help))
COMMANDS = {}


# ----------------------------------------------------------------------------- entry point
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, (fn, add_arguments, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=fn.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(p)
        p.set_defaults(fn=fn)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    main()
