"""Download the authors' InternLM-XComposer2-VL modeling code, the oracle of tests/test_xcomposer2.py.

    python dev/fetch_xcomposer2_reference.py ~/ixc2_reference
    pip install einops                                   # the authors' code imports it
    IXC2_REF_DIR=~/ixc2_reference python -m pytest tests/test_xcomposer2.py

No installable package ships these files, and the repo does not copy them. They come from OpenGVLab/LAMM at a pinned
commit (src/ChEF/models/internlm/), a verbatim copy of the release's remote code (internlm/internlm-xcomposer2-vl-7b, an
early revision); each file's SHA-256 is checked, and a file that differs is refused. Files already there with the right
hash are kept.
"""
import argparse
import hashlib
import os
import urllib.request

COMMIT = "15eb22d4edd3fcc03bc83346476d25e6e7f5f940"
URL = f"https://raw.githubusercontent.com/OpenGVLab/LAMM/{COMMIT}/src/ChEF/models/internlm/"
SHA256 = {
    "build_mlp.py": "c70d46d351065b8ba2fd68fe591e3b7aee3994eda2f9d994dbcb7e09017633c2",
    "configuration_internlm_xcomposer2.py": "301a339b22064b5d490e807d4fca16b71488c62152fb041dde3f9faaac181f5a",
    "modeling_internlm2.py": "889dec0e90ece871fafa660fa307407361f003de8f3629f3fccd15c535bbb964",
    "modeling_internlm_xcomposer2.py": "d3405d5fd1a93d67860d53cfed6862b919f014efaf94cb9885d00eca4d58c42d",
    "tokenization_internlm_xcomposer2.py": "43ec22bf6bd6fb0d8cda5f1d6580b26964ae269d9230397c0dd4f814ee34a7c2",
}


def main(folder):
    os.makedirs(folder, exist_ok=True)
    for name, want in SHA256.items():
        path = os.path.join(folder, name)
        if os.path.isfile(path) and hashlib.sha256(open(path, "rb").read()).hexdigest() == want:
            print(f"{name}: already there")
            continue
        with urllib.request.urlopen(URL + name, timeout=60) as r:
            data = r.read()
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            raise SystemExit(f"{URL + name}: SHA-256 {got}, expected {want}; not written")
        with open(path + ".partial", "wb") as f:
            f.write(data)
        os.replace(path + ".partial", path)
        print(f"{name}: {len(data):,} bytes")
    print(f"IXC2_REF_DIR={os.path.abspath(folder)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="where the five files go (then IXC2_REF_DIR=FOLDER)")
    main(parser.parse_args().folder)
