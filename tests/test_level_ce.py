"""Tests for the fused level cross-entropy op (iqa_vlm/level_ce.py + csrc/).

    python setup.py build_ext --inplace && IQA_REQUIRE_EXT=1 python -m pytest tests/test_level_ce.py -q

Extension tests skip when iqa_vlm._C is not built, unless IQA_REQUIRE_EXT=1 (then importing iqa_vlm.level_ce
fails). CUDA tests skip without a GPU. Accuracy is measured against an independent float64
reference (dense target distribution q, loss = -sum q log_softmax(z)) as a normwise relative error,
max|a - b| / max|b|: <= 1e-5 for fp32 inputs, <= 1e-2 for bf16/fp16 inputs.
"""
import os
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from iqa_vlm import level_ce  # noqa: E402

EXT = level_ce.ext
needs_ext = pytest.mark.skipif(EXT is None, reason="iqa_vlm._C not built (python setup.py build_ext --inplace)")
needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and EXT is not None and EXT.with_cuda),
                                reason="needs a GPU and iqa_vlm._C built with CUDA")
CPU_KERNELS = EXT.cpu_kernels() if EXT is not None else []
LEVELS = [11, 3, 42, 7, 100]  # deliberately unsorted


# ----------------------------------------------------------------------------- helpers

def reference(logits, target, level_ids, eps=0.0, smooth_over="vocab", ignore_index=-100):
    """float64 reference: loss_i = -sum_c q_ic log_softmax(z_i)_c with an explicit target distribution q."""
    z = logits.detach().double().requires_grad_()
    N, V = z.shape
    lv = [] if level_ids is None else level_ids.tolist()
    q = torch.zeros(N, V, dtype=torch.float64)
    for i, y in enumerate(target.tolist()):
        if y == ignore_index:
            continue
        if smooth_over == "vocab":
            q[i] += eps / V
            q[i, y] += 1 - eps
        elif y in lv:
            q[i, lv] += eps / len(lv)
            q[i, y] += 1 - eps
        else:
            q[i, y] = 1.0
    loss = -(q * torch.log_softmax(z, 1)).sum(1)
    probs = torch.softmax(z.detach()[:, lv], 1) if lv else None
    return loss, probs, z


def relerr(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if b.numel() == 0:
        return 0.0
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def run(logits, target, level_ids, eps=0.0, smooth_over="vocab", grad=None, **kw):
    x = logits.detach().clone().requires_grad_()
    loss, probs = level_ce.level_cross_entropy(x, target, level_ids, eps, smooth_over, **kw)
    g = grad if grad is not None else torch.linspace(0.5, 1.5, loss.numel(), device=loss.device)
    loss.backward(g)
    return loss, probs, x.grad, g


def check(logits, target, level_ids, eps=0.0, smooth_over="vocab", tol=None, **kw):
    """Run the op and compare loss, probs and gradient against the float64 reference."""
    tol = tol or (1e-5 if logits.dtype == torch.float32 else 1e-2)
    loss, probs, grad, g = run(logits, target, level_ids, eps, smooth_over, **kw)
    rloss, rprobs, z = reference(logits.cpu(), target.cpu(), level_ids, eps, smooth_over,
                                 kw.get("ignore_index", -100))
    rloss.backward(g.double().cpu())
    assert loss.dtype == torch.float32 and loss.shape == (logits.shape[0],)
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    assert relerr(loss, rloss) <= tol, ("loss", relerr(loss, rloss))
    assert relerr(grad, z.grad) <= tol, ("grad", relerr(grad, z.grad))
    if level_ids is None:
        assert probs is None
    else:
        assert probs.dtype == torch.float32 and probs.shape == (logits.shape[0], len(level_ids))
        assert relerr(probs, rprobs) <= tol, ("probs", relerr(probs, rprobs))
    return loss, probs, grad


def data(N, V, dtype=torch.float32, device="cpu", seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(N, V, generator=g) * scale).to(dtype).to(device)
    target = torch.randint(0, V, (N,), generator=g).to(device)
    return logits, target


@pytest.fixture(params=CPU_KERNELS or ["none"])
def cpu_kernel(request):
    """Each compiled CPU kernel build (DEFAULT / AVX2 / AVX512) in turn."""
    if EXT is None:
        pytest.skip("iqa_vlm._C not built (python setup.py build_ext --inplace)")
    if request.param == "AVX512" and torch.backends.cpu.get_cpu_capability() != "AVX512" or \
            request.param == "AVX2" and torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip(f"this CPU cannot run the {request.param} kernels")
    EXT.set_cpu_kernel(request.param)
    with level_ce.force_backend("ext"):
        yield request.param
    EXT.set_cpu_kernel("")


# ----------------------------------------------------------------------------- accuracy

@pytest.mark.parametrize("V", [1, 7, 1001, 32003])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_vocab_smoothing_vs_reference_and_cross_entropy(path, V, eps):
    logits, target = data(13, V)
    lv = torch.tensor(LEVELS[:3]) if V > 42 else None
    loss, _, _ = check(logits, target, lv, eps)
    ce = F.cross_entropy(logits.double(), target, label_smoothing=eps, reduction="none")
    assert relerr(loss, ce) <= 1e-5


@pytest.mark.parametrize("V", [7, 33, 1001, 32003])
def test_every_cpu_kernel(cpu_kernel, V):
    logits, target = data(9, V, seed=1)
    target[2] = -100
    lv = torch.tensor([0, V - 1, V // 2]) if V > 2 else torch.tensor([0])
    check(logits, target, lv, 0.1, "vocab")
    target[3] = int(lv[1])
    check(logits, target, lv, 0.2, "levels")
    for dtype in (torch.bfloat16, torch.float16):
        check(logits.to(dtype), target, lv, 0.1, "vocab")


def test_levels_smoothing_rows_with_and_without_level_target(path):
    logits, target = data(12, 1001, seed=2)
    lv = torch.tensor(LEVELS)
    target[:6] = lv[torch.arange(6) % 5]  # rows 0-5: level targets, 6-11: ordinary tokens
    loss, _, _ = check(logits, target, lv, 0.1, "levels")
    nll = F.cross_entropy(logits.double(), target, reduction="none")
    assert relerr(loss[6:], nll[6:]) <= 1e-5  # eps ignored when the target is not a level
    assert (loss[:6] - nll[:6]).abs().max() > 1e-3  # and applied when it is


@pytest.mark.parametrize("K", range(1, 9))
def test_K_1_to_8(path, K):
    logits, target = data(10, 257, seed=K)
    lv = torch.randperm(257, generator=torch.Generator().manual_seed(K))[:K]
    target[::2] = lv[torch.arange(5) % K]
    check(logits, target, lv, 0.1, "levels")
    check(logits, target, lv, 0.1, "vocab")


def test_ignored_rows(path):
    logits, target = data(8, 1001, seed=3)
    target[[1, 4, 7]] = -100
    loss, probs, grad = check(logits, target, torch.tensor(LEVELS), 0.1)
    assert (loss[[1, 4, 7]] == 0).all() and (grad[[1, 4, 7]] == 0).all()
    assert torch.isfinite(probs).all()  # the closed-set softmax is still given on ignored rows
    target[[1, 4, 7]] = torch.tensor([0, 1, 2])
    target[2] = 5
    loss2, _, grad2 = check(logits, target, torch.tensor(LEVELS), 0.1, ignore_index=5)  # a custom ignore_index
    assert loss2[2] == 0 and (grad2[2] == 0).all() and (loss2 != 0).sum() == 7


def test_all_rows_ignored_and_empty(path):
    logits, target = data(4, 100)
    target[:] = -100
    loss, probs, grad, _ = run(logits, target, torch.tensor([1, 2]), 0.1)
    assert (loss == 0).all() and (grad == 0).all() and probs.shape == (4, 2)
    loss, probs, grad, _ = run(logits[:0], target[:0], torch.tensor([1, 2]), 0.1)
    assert loss.shape == (0,) and probs.shape == (0, 2) and grad.shape == (0, 100)
    loss, probs = level_ce.level_cross_entropy(logits[:0], target[:0])
    assert loss.shape == (0,) and probs is None


def test_large_vocab_151936(path):
    logits, target = data(3, 151936, seed=4, scale=2.0)
    lv = torch.tensor([151935, 0, 70000, 5, 9])
    target[1] = 70000
    check(logits, target, lv, 0.1, "vocab")
    check(logits.bfloat16(), target, lv, 0.1, "levels")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("V", [7, 1001, 32003])
def test_half_precision_inputs(path, dtype, V):
    logits, target = data(11, V, dtype=dtype, seed=5)
    lv = torch.tensor([0, V - 1, V // 3])
    target[0] = -100
    target[1] = V - 1
    check(logits, target, lv, 0.1, "vocab")
    check(logits, target, lv, 0.1, "levels")


def test_extreme_logits(path):
    logits, target = data(6, 500, seed=6, scale=40.0)  # exp under/overflow without the max shift
    logits[0] = -1e4
    logits[0, 17] = 50.0
    check(logits, target, torch.tensor(LEVELS), 0.1)


def test_nan_logits_propagate(path):
    logits, target = data(3, 3000, seed=15)
    logits[1, 2500] = float("nan")
    loss, probs, grad, _ = run(logits, target, torch.tensor(LEVELS), 0.1)
    assert loss[1].isnan() and grad[1].isnan().all()
    assert torch.isfinite(loss[[0, 2]]).all() and torch.isfinite(grad[[0, 2]]).all()


def test_noncontiguous_logits_and_scalar_grad(path):
    big, target = data(6, 2002, seed=7)
    logits, target = big[:, ::2], target % 1001  # non-contiguous view
    x = logits.clone().requires_grad_()
    loss, _ = level_ce.level_cross_entropy(x, target, None, 0.1)
    loss.sum().backward()  # grad_loss arrives as an expanded scalar
    rl, _, z = reference(logits, target, None, 0.1)
    rl.sum().backward()
    assert relerr(loss, rl) <= 1e-5 and relerr(x.grad, z.grad) <= 1e-5


@needs_ext
@pytest.mark.parametrize("smooth_over", ["vocab", "levels"])
def test_inplace_backward_matches(smooth_over):
    for dtype in (torch.float32, torch.bfloat16):
        logits, target = data(7, 1001, dtype=dtype, seed=8)
        target[[0, 3]] = torch.tensor([11, 42])
        target[5] = -100
        _, _, g_ref, _ = run(logits, target, torch.tensor(LEVELS), 0.1, smooth_over)
        w = logits.clone().requires_grad_()
        h = w * 1  # a non-leaf whose buffer the backward may overwrite
        loss, _ = level_ce.level_cross_entropy(h, target, torch.tensor(LEVELS), 0.1, smooth_over, inplace_backward=True)
        loss.backward(torch.linspace(0.5, 1.5, 7))
        assert torch.equal(w.grad, g_ref)


def test_fallback_matches_extension():
    if EXT is None:
        pytest.skip("iqa_vlm._C not built")
    logits, target = data(9, 3001, seed=9)
    target[[1, 2]] = torch.tensor([3, -100])
    lv = torch.tensor(LEVELS)
    for smooth_over in ("vocab", "levels"):
        with level_ce.force_backend("ext"):
            a = run(logits, target, lv, 0.1, smooth_over)
        with level_ce.force_backend("torch"):
            b = run(logits, target, lv, 0.1, smooth_over)
        for u, v in zip(a[:3], b[:3]):
            assert relerr(u, v) <= 1e-5


def test_level_scores():
    probs = torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 0, 0, 1.0], [0.2, 0.2, 0.2, 0.2, 0.2]])
    assert torch.allclose(level_ce.level_scores(probs), torch.tensor([1.0, 5.0, 3.0]))
    assert torch.allclose(level_ce.level_scores(probs, [0, 0.25, 0.5, 0.75, 1.0]), torch.tensor([0.0, 1.0, 0.5]))


# ----------------------------------------------------------------------------- errors

BAD_INPUTS = [  # (what to change, message fragment)
    (dict(logits=torch.randn(5)), "logits must be 2-D"),
    (dict(logits=torch.randint(0, 3, (4, 10))), "logits must be float32, bfloat16 or float16"),
    (dict(target=torch.zeros(3, dtype=torch.long)), "target must be 1-D of length N=4"),
    (dict(target=torch.zeros(4)), "target must be int64"),
    (dict(target=torch.tensor([0, 1, 10, 2])), "target[2]=10 is out of range [0, 10)"),
    (dict(target=torch.tensor([0, -1, 1, 2])), "target[1]=-1 is out of range [0, 10)"),
    (dict(level_ids=torch.tensor([1, 12])), "level_ids[1]=12 is out of range [0, 10)"),
    (dict(level_ids=torch.tensor([1, 2, 1])), "level_ids has duplicate id 1"),
    (dict(level_ids=torch.tensor([1.0, 2.0])), "level_ids must be int64"),
    (dict(label_smoothing=1.0), "label_smoothing must be in [0, 1)"),
    (dict(label_smoothing=-0.1), "label_smoothing must be in [0, 1)"),
    (dict(smooth_over="tokens"), "smooth_over must be 'vocab' or 'levels'"),
    (dict(level_ids=None, smooth_over="levels"), "smooth_over='levels' needs level_ids"),
]


@pytest.mark.parametrize("change,msg", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_inputs_name_the_argument(path, change, msg):
    args = dict(logits=torch.randn(4, 10), target=torch.tensor([0, 1, -100, 9]), level_ids=torch.tensor([1, 2]),
                label_smoothing=0.1, smooth_over="vocab")
    args.update(change)
    with pytest.raises((RuntimeError, ValueError, TypeError)) as e:
        level_ce.level_cross_entropy(**args)
    assert msg in str(e.value)


@needs_ext
def test_op_rejects_noncontiguous_logits():
    x = torch.randn(4, 20)[:, ::2]
    with pytest.raises(RuntimeError, match="logits must be contiguous"):
        torch.ops.iqa_vlm.level_ce_fwd(x, torch.zeros(4, dtype=torch.long), torch.tensor([1]), 0.0, False, -100)


# ----------------------------------------------------------------------------- registration, compile

@needs_ext
def test_opcheck():
    logits, target = data(6, 301, seed=10)
    target[2] = -100
    lv = torch.tensor([3, 5, 300])
    for smooth in (False, True):
        x = logits.clone().requires_grad_()
        torch.library.opcheck(torch.ops.iqa_vlm.level_ce_fwd.default, (x, target, lv, 0.1, smooth, -100, False))
        torch.library.opcheck(torch.ops.iqa_vlm.level_ce_fwd.default,
                              (logits.bfloat16(), target, torch.empty(0, dtype=torch.long), 0.0, smooth, -100, False))
        _, _, lse = torch.ops.iqa_vlm.level_ce_fwd(logits, target, lv, 0.1, smooth, -100)
        g = torch.rand(6)
        torch.library.opcheck(torch.ops.iqa_vlm.level_ce_bwd.default, (g, logits, target, lv, lse, 0.1, smooth, -100))
        torch.library.opcheck(torch.ops.iqa_vlm.level_ce_bwd_.default,
                              (g, logits.clone(), target, lv, lse, 0.1, smooth, -100))


def _compiled_step(backend, inplace=False):
    logits, target = data(5, 1001, seed=11)
    lv = torch.tensor(LEVELS)
    target[0] = 42

    def step(x, y):
        loss, probs = level_ce.level_cross_entropy(x * 1, y, lv, 0.1, "levels", inplace_backward=inplace)
        return loss.mean() + 0 * probs.sum()

    x = logits.clone().requires_grad_()
    out = torch.compile(step, fullgraph=True, backend=backend)(x, target)
    out.backward()
    x2 = logits.clone().requires_grad_()
    ref = step(x2, target)
    ref.backward()
    assert relerr(out, ref) <= 1e-6 and relerr(x.grad, x2.grad) <= 1e-6


@needs_ext
def test_compile_fullgraph_aot_eager():
    torch._dynamo.reset()
    _compiled_step("aot_eager")
    _compiled_step("aot_eager", inplace=True)


@needs_ext
def test_compile_fullgraph_inductor():
    torch._dynamo.reset()
    _compiled_step("inductor")


# ----------------------------------------------------------------------------- backend selection

def test_backend_selection_and_forcing():
    assert level_ce.backend("cpu") == ("cpp" if EXT is not None and level_ce._forced != "torch" else "torch")
    with level_ce.force_backend("torch"):
        assert level_ce.backend("cpu") == "torch"
    with pytest.raises(ValueError):
        with level_ce.force_backend("triton"):
            pass


def test_missing_extension_warns_once_or_fails_when_required(monkeypatch):
    monkeypatch.setattr(level_ce, "ext", None)
    monkeypatch.setattr(level_ce, "_forced", None)
    monkeypatch.setattr(level_ce, "_warned", False)
    monkeypatch.setattr(level_ce, "REQUIRE_EXT", False)
    logits, target = data(3, 50)
    assert level_ce.backend("cpu") == "torch"
    with pytest.warns(UserWarning, match="build_ext --inplace"):
        level_ce.level_cross_entropy(logits, target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        level_ce.level_cross_entropy(logits, target)  # only once
    monkeypatch.setattr(level_ce, "REQUIRE_EXT", True)
    with pytest.raises(RuntimeError, match="python setup.py build_ext --inplace"):
        level_ce.level_cross_entropy(logits, target)
    monkeypatch.setattr(level_ce, "REQUIRE_EXT", False)
    monkeypatch.setattr(level_ce, "_forced", "ext")
    with pytest.raises(RuntimeError, match="not built"):
        level_ce.level_cross_entropy(logits, target)


# ----------------------------------------------------------------------------- CUDA

@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("V", [1, 7, 1001, 32003, 151936])
def test_cuda_vs_reference(dtype, V):
    logits, target = data(6, V, dtype=dtype, seed=12, device="cuda")
    target[1] = -100
    lv = torch.tensor([0, V - 1, V // 2], device="cuda").unique() if V > 1 else torch.tensor([0], device="cuda")
    target[2] = int(lv[-1])
    with level_ce.force_backend("ext"):
        assert level_ce.backend("cuda") == "cuda"
        check(logits, target, lv, 0.1, "vocab")
        check(logits, target, lv, 0.1, "levels")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_misaligned_rows_and_inplace(dtype):
    base, target = data(5, 1002, dtype=dtype, seed=13, device="cuda")
    logits = base.flatten()[1:5006].view(5, 1001)  # row starts not 16-byte aligned
    target = target % 1001
    lv = torch.tensor(LEVELS, device="cuda")
    g = torch.linspace(0.5, 1.5, 5, device="cuda")
    loss, probs, lse = torch.ops.iqa_vlm.level_ce_fwd(logits, target, lv, 0.1, False, -100)
    grad = torch.ops.iqa_vlm.level_ce_bwd(g, logits, target, lv, lse, 0.1, False, -100)
    rloss, rprobs, z = reference(logits.cpu(), target.cpu(), lv, 0.1)
    rloss.backward(g.double().cpu())
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert relerr(loss, rloss) <= tol and relerr(probs, rprobs) <= tol and relerr(grad, z.grad) <= tol
    torch.ops.iqa_vlm.level_ce_bwd_(g, logits, target, lv, lse, 0.1, False, -100)  # in place, misaligned
    assert torch.equal(logits, grad)


@needs_cuda
def test_cuda_matches_cpu_and_errors():
    logits, target = data(4, 4099, dtype=torch.bfloat16, seed=14)
    lv = torch.tensor(LEVELS)
    a = run(logits, target, lv, 0.1)
    b = run(logits.cuda(), target.cuda(), lv.cuda(), 0.1)
    for u, v in zip(a[:3], b[:3]):
        assert relerr(v, u) <= 1e-2
    with pytest.raises(ValueError, match="target\\[0\\]=5000 is out of range"):
        level_ce.level_cross_entropy(logits.cuda(), torch.full((4,), 5000, device="cuda"))


def test_extension_sources_have_distinct_stems():
    """setuptools names each object after its source's stem: level_ce.cpp next to level_ce.cu would both become
    level_ce.o and break the CUDA build (ninja: "multiple rules generate"), which a CPU-only build never compiles."""
    csrc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
    sources = [f for f in os.listdir(csrc) if f.endswith((".cpp", ".cu"))]
    stems = [os.path.splitext(f)[0] for f in sources]
    assert "level_ce_cuda.cu" in sources
    assert len(stems) == len(set(stems)), sorted(sources)


OP_ERRORS = r'''
import torch, iqa_vlm.level_ce  # noqa: F401  (registers torch.ops.iqa_vlm)
from iqa_vlm import _C
fwd, bwd = torch.ops.iqa_vlm.level_ce_fwd, torch.ops.iqa_vlm.level_ce_bwd
x, t, L = torch.randn(4, 10), torch.tensor([0, 1, -100, 9]), torch.tensor([1, 2])
lse = fwd(x, t, L, 0.0, False, -100)[2]
P = torch.full((4, 2), 0.5)
cases = [
    lambda: fwd(x.long(), t, L, 0.0, False, -100), lambda: fwd(torch.randn(5), t, L, 0.0, False, -100),
    lambda: fwd(torch.randn(4, 20)[:, ::2], t, L, 0.0, False, -100), lambda: fwd(torch.randn(4, 0), t, L, 0.0, False, -100),
    lambda: fwd(x, t[:3], L, 0.0, False, -100), lambda: fwd(x, t.float(), L, 0.0, False, -100),
    lambda: fwd(x, t, L[None], 0.0, False, -100), lambda: fwd(x, t, L.float(), 0.0, False, -100),
    lambda: fwd(x, t, L, 1.5, False, -100), lambda: fwd(x, t, torch.tensor([1, 2**40]), 0.0, False, -100),
    lambda: fwd(x, t, torch.tensor([3, 3]), 0.0, False, -100), lambda: fwd(x, torch.tensor([0, 1, 2**40, 9]), L, 0.0, False, -100),
    lambda: fwd(x, t, L, 0.0, True, -100, False, P), lambda: fwd(x, t, L[:0], 0.0, False, -100, False, P),
    lambda: fwd(x, t, L, 0.0, False, -100, False, P[:, :1]), lambda: fwd(x, t, L, 0.0, False, -100, False, P.long()),
    lambda: fwd(x, t, L, 0.0, False, -100, False, P - 1),
    lambda: bwd(torch.ones(3), x, t, L, lse, 0.0, False, -100), lambda: bwd(torch.ones(4), x, t, L, lse[:2], 0.0, False, -100),
]
for case in cases:
    try:
        case()
        print("NO ERROR")
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        print(str(e).splitlines()[0])
_C.set_cpu_kernel("no_such_kernel")
try:
    fwd(x, t, L, 0.0, False, -100)
except RuntimeError as e:
    print(str(e).splitlines()[0])
'''
OP_MESSAGES = ["logits must be float32, bfloat16 or float16, got Long", "logits must be 2-D [N, V], got shape [5]",
               "logits must be contiguous", "at least one column", "target must be 1-D of length N=4, got shape [3]",
               "target must be int64, got Float", "level_ids must be 1-D [K], got shape [1, 2]",
               "level_ids must be int64, got Float", "label_smoothing must be in [0, 1), got 1.5",
               "level_ids[1]=1099511627776 is out of range [0, 10)", "level_ids has duplicate id 3",
               "target[2]=1099511627776 is out of range [0, 10) and is not ignore_index=-100",
               "target_probs cannot be combined", "target_probs needs level_ids (K >= 1)",
               "target_probs must be [N, K] = [4, 2], got shape [4, 1]", "target_probs must be floating point, got Long",
               "target_probs[0, 0]=-0.5 must be finite and >= 0", "grad_loss must have N=4 elements, got shape [3]",
               "lse must be the contiguous float32 [N] tensor", "CPU kernel no_such_kernel was not compiled"]


@needs_ext
def test_every_error_message_of_the_op_is_raised_whole():
    """Each check of csrc/level_ce.cpp, called on the raw ops in a process of its own: the message comes back whole, with
    its numbers (int64 beyond 32 bits included), and the process does not crash while formatting it."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", OP_ERRORS], cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == len(OP_MESSAGES), r.stdout
    for line, msg in zip(lines, OP_MESSAGES):
        assert msg in line, (line, msg)
