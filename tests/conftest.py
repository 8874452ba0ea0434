import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # a plain clone: the package iqa_vlm/ and the entry scripts, without pip install


import pytest  # noqa: E402


@pytest.fixture(params=["ext", "torch"])
def path(request):
    """Run an op test through the extension and through the forced pure-PyTorch fallback."""
    from iqa_vlm import level_ce
    if request.param == "ext" and level_ce.ext is None:
        pytest.skip("iqa_vlm._C not built (python setup.py build_ext --inplace)")
    with level_ce.force_backend(request.param):
        yield request.param
