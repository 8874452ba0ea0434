"""The op's soft-target mode (DeQA-Score's soft level labels): loss KL(P || softmax(z)[L]) on the rows whose target
is a level id, gradient g (sum(P) softmax(z) - scatter(P)), hard targets elsewhere.

    python -m pytest tests/test_level_ce_soft.py -q

Checked against an independent float64 reference (autograd through log_softmax) and against DeQA-Score's own
formula (F.kl_div of the whole-vocabulary log-softmax with P scattered over the level ids, reduction per row), as a
normwise relative error max|a - b| / max|b|: <= 1e-5 for fp32 inputs, <= 2e-2 for bf16/fp16.
"""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from iqa_vlm import level_ce  # noqa: E402

EXT = level_ce.ext
needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and EXT is not None and EXT.with_cuda),
                                reason="needs a GPU and iqa_vlm._C built with CUDA")
CPU_KERNELS = EXT.cpu_kernels() if EXT is not None else []


def relerr(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def case(V, N=10, K=5, dtype=torch.float32, device="cpu", seed=0):
    """Rows: 0-3 soft P (random, one with zeros), 4 one-hot P, 5 an unnormalised P (mass 1.03, as DeQA's clamped
    labels can be), 6-7 hard non-level targets, 8 ignored, 9 soft with a mass-0 P (all zero)."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(N, V, generator=g) * 3).to(dtype)
    level_ids = torch.randperm(V, generator=g)[:K]
    P = torch.distributions.Dirichlet(torch.ones(K)).sample((N,))
    P[1, :2] = 0
    P[1] /= P[1].sum()
    P[4] = F.one_hot(torch.tensor(2), K).float()
    P[5] *= 1.03
    P[9] = 0
    target = level_ids[torch.randint(0, K, (N,), generator=g)]
    others = torch.tensor([c for c in range(V) if c not in set(level_ids.tolist())][:2])
    target[6:8] = others
    target[8] = -100
    return logits.to(device), target.to(device), level_ids.to(device), P.to(device)


def reference(logits, target, level_ids, P, eps=0.0):
    """float64: soft rows sum_k P_k (log P_k - log_softmax(z)_{L_k}); hard rows label-smoothed CE; ignored 0."""
    z = logits.detach().cpu().double().requires_grad_()
    logp = torch.log_softmax(z, 1)
    L, t = level_ids.cpu(), target.cpu()
    losses = []
    for i in range(z.shape[0]):
        y = int(t[i])
        if y == -100:
            losses.append(z[i].sum() * 0)
        elif y in L.tolist():
            p = P[i].cpu().double()
            losses.append(torch.xlogy(p, p).sum() - (p * logp[i, L]).sum())
        else:
            losses.append(-(1 - eps) * logp[i, y] - eps * logp[i].mean())
    return torch.stack(losses), z


def check(logits, target, level_ids, P, eps=0.0, tol=None, inplace=False):
    tol = tol or (1e-5 if logits.dtype == torch.float32 else 2e-2)
    x = logits.detach().clone().requires_grad_()
    y = x * 1 if inplace else x  # the in-place backward overwrites its input: give it a fresh buffer
    loss, probs = level_ce.level_cross_entropy(y, target, level_ids, eps, target_probs=P, inplace_backward=inplace)
    g = torch.linspace(0.5, 1.5, loss.numel(), device=loss.device)
    loss.backward(g)
    rloss, z = reference(logits, target, level_ids, P, eps)
    rloss.backward(g.double().cpu())
    assert loss.dtype == torch.float32 and x.grad.dtype == logits.dtype
    assert relerr(loss, rloss) <= tol, ("loss", relerr(loss, rloss))
    assert relerr(x.grad, z.grad) <= tol, ("grad", relerr(x.grad, z.grad))
    assert relerr(probs, torch.softmax(z.detach()[:, level_ids.cpu()], 1)) <= tol
    return loss, x.grad


@pytest.mark.parametrize("V", [32000, 151936, 32003])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_soft_rows_vs_float64_reference(path, V, eps):
    check(*case(V), eps=eps)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_soft_rows_half_precision(path, dtype):
    check(*case(32003, dtype=dtype))


@pytest.mark.parametrize("kernel", CPU_KERNELS or ["none"])
def test_soft_rows_every_cpu_kernel(kernel):
    if EXT is None:
        pytest.skip("iqa_vlm._C not built")
    cap = torch.backends.cpu.get_cpu_capability()
    if kernel == "AVX512" and cap != "AVX512" or kernel == "AVX2" and cap not in ("AVX2", "AVX512"):
        pytest.skip(f"this CPU cannot run the {kernel} kernels")
    EXT.set_cpu_kernel(kernel)
    try:
        with level_ce.force_backend("ext"):
            for V in (7, 1001, 32003):
                check(*case(V, seed=V), eps=0.1)
            check(*case(1001, dtype=torch.bfloat16))
    finally:
        EXT.set_cpu_kernel("")


def test_matches_deqa_kl_and_one_hot_is_cross_entropy(path):
    """DeQA-Score's loss at the level position: F.kl_div(log softmax over the vocabulary, P scattered over the level
    ids); a one-hot P is plain cross-entropy."""
    logits, target, L, P = case(1001)
    soft = torch.tensor([0, 1, 2, 3, 4, 5])
    loss, _ = level_ce.level_cross_entropy(logits, target, L, target_probs=P)
    dense = torch.zeros(len(soft), logits.shape[1], dtype=torch.float64)
    dense[:, L] = P[soft].double()
    deqa = F.kl_div(torch.log_softmax(logits[soft].double(), 1), dense, reduction="none").sum(1)
    assert relerr(loss[soft], deqa) <= 1e-5
    ce = F.cross_entropy(logits[4:5].double(), L[2:3], reduction="none")
    assert relerr(loss[4:5], ce) <= 1e-5


def test_inplace_backward_and_fallback_agree():
    if EXT is None:
        pytest.skip("iqa_vlm._C not built")
    logits, target, L, P = case(32003, seed=3)
    grads = []
    for backend, inplace in (("ext", False), ("ext", True), ("torch", False)):
        with level_ce.force_backend(backend):
            x = logits.clone().requires_grad_()
            y = x * 1  # a fresh buffer the in-place backward may overwrite
            loss, _ = level_ce.level_cross_entropy(y, target, L, target_probs=P, inplace_backward=inplace)
            loss.sum().backward()
            grads.append(x.grad)
    assert torch.equal(grads[0], grads[1])
    assert relerr(grads[0], grads[2]) <= 1e-5


@pytest.mark.parametrize("change, msg", [
    (lambda P: P.sub(0.5), "must be finite and >= 0"),
    (lambda P: P.index_fill(1, torch.tensor([0]), float("nan")), "must be finite and >= 0"),
    (lambda P: P[:, :4], "must be \\[N, K\\]"),
    (lambda P: P.long(), "floating point"),
])
def test_bad_target_probs_name_the_argument(path, change, msg):
    logits, target, L, P = case(101)
    with pytest.raises((ValueError, RuntimeError, TypeError), match=msg):
        level_ce.level_cross_entropy(logits, target, L, target_probs=change(P))


def test_soft_needs_levels_and_no_level_smoothing(path):
    logits, target, L, P = case(101)
    with pytest.raises(ValueError, match="needs level_ids"):
        level_ce.level_cross_entropy(logits, target, None, target_probs=P)
    with pytest.raises(ValueError, match="cannot be combined"):
        level_ce.level_cross_entropy(logits, target, L, 0.1, "levels", target_probs=P)


def test_opcheck_with_target_probs():
    if EXT is None:
        pytest.skip("iqa_vlm._C not built")
    logits, target, L, P = case(257)
    x = logits.clone().requires_grad_()
    torch.library.opcheck(torch.ops.iqa_vlm.level_ce_fwd.default, (x, target, L, 0.1, False, -100, False, P))
    _, _, lse = torch.ops.iqa_vlm.level_ce_fwd(logits, target, L, 0.1, False, -100, False, P)
    g = torch.rand(logits.shape[0])
    torch.library.opcheck(torch.ops.iqa_vlm.level_ce_bwd.default, (g, logits, target, L, lse, 0.1, False, -100, P))
    torch.library.opcheck(torch.ops.iqa_vlm.level_ce_bwd_.default,
                          (g, logits.clone(), target, L, lse, 0.1, False, -100, P))


def test_compiled_fullgraph():
    if EXT is None:
        pytest.skip("iqa_vlm._C not built")
    logits, target, L, P = case(257)

    def step(x):
        return level_ce.level_cross_entropy(x, target, L, target_probs=P)[0].sum()

    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    step(x1).backward()
    torch.compile(step, backend="aot_eager", fullgraph=True)(x2).backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("V", [32000, 151936, 32003])
def test_cuda_soft_rows(dtype, V):
    logits, target, L, P = case(V, dtype=dtype, device="cuda", seed=V)
    with level_ce.force_backend("ext"):
        check(logits, target, L, P, eps=0.1)
        check(logits, target, L, P, inplace=True)
