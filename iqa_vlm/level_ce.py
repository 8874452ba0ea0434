"""Fused closed-set (level) softmax + label-smoothed cross-entropy over vocab logits.

    from iqa_vlm import level_ce             # or: from iqa_vlm import level_cross_entropy
    loss, probs = level_ce.level_cross_entropy(logits, target, level_ids=level_ids,
                                              label_smoothing=0.1, smooth_over="vocab")
    loss.mean().backward()                  # gradient flows into logits; probs is not differentiated
    score = level_ce.level_scores(probs)     # probs @ [1, 2, ..., K]
    level_ce.backend(logits.device)          # "cuda" | "cpp" | "torch": which path runs

logits [N, V] fp32/bf16/fp16 (only the supervised positions), target [N] int64, level_ids [K]
int64 or None. Returns loss [N] fp32 (0 where target == ignore_index) and probs [N, K] fp32 (softmax
over logits[:, level_ids]; None without level_ids). Exact semantics: docs/DESIGN.md, "The op".

Soft targets (DeQA-Score's soft level labels): target_probs P [N, K] (finite, >= 0) makes every row whose
target is a level id a soft row, loss KL(P || softmax(z)[level_ids]) over the whole-vocabulary softmax,
gradient g (sum(P) softmax(z) - scatter(P)); the other rows keep the hard target (and its smoothing):

    loss, probs = level_ce.level_cross_entropy(logits, target, level_ids=L, target_probs=P)

The fast path is the C++/CUDA extension (build: `python setup.py build_ext --inplace`), which
registers torch.ops.iqa_vlm.level_ce_fwd / level_ce_bwd / level_ce_bwd_; here they get their
fake (meta) kernels and autograd formula, so they work under torch.compile. Without the extension a
pure-PyTorch fallback with the same semantics runs, after one warning. IQA_REQUIRE_EXT=1 makes a
missing extension an error instead (CI sets it). Forcing a path: IQA_KERNEL_BACKEND=torch|ext in
the environment, or `with level_ce.force_backend("torch"): ...` (tests).

inplace_backward=True writes the gradient into the logits buffer (saves one [N, V] tensor); only
use it when nothing else needs those logits afterwards (e.g. a fresh `hidden @ W.T` result).
"""
import contextlib
import os
import warnings

import torch

BUILD_CMD = "python setup.py build_ext --inplace"
REQUIRE_EXT = os.environ.get("IQA_REQUIRE_EXT", "0") == "1"

try:
    from iqa_vlm import _C as ext  # the compiled extension; importing it registers torch.ops.iqa_vlm.*

    _EXT_ERROR = None
except ImportError as e:  # not built (or built against another torch)
    ext, _EXT_ERROR = None, e
    if REQUIRE_EXT:
        raise ImportError(f"IQA_REQUIRE_EXT=1 but the extension iqa_vlm._C could not be imported ({e}). "
                          f"Build it with: {BUILD_CMD}") from e

_forced = os.environ.get("IQA_KERNEL_BACKEND") or None  # None | "torch" | "ext"
if _forced not in (None, "torch", "ext"):
    raise ValueError(f"IQA_KERNEL_BACKEND must be 'torch' or 'ext', got {_forced!r}")
_warned = False


# ----------------------------------------------------------------------------- backend choice

def _ext_has(device_type):
    if ext is None:
        return False
    return device_type == "cpu" or (device_type == "cuda" and ext.with_cuda)


def backend(device=None):
    """Which path level_cross_entropy takes for tensors on `device`: "cuda", "cpp" or "torch"."""
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if _forced != "torch" and _ext_has(device.type):
        return "cuda" if device.type == "cuda" else "cpp"
    return "torch"


@contextlib.contextmanager
def force_backend(name):
    """Force "torch" (the fallback) or "ext" (the extension; an error if it cannot run) inside the block."""
    global _forced
    if name not in (None, "torch", "ext"):
        raise ValueError(f"force_backend: name must be 'torch', 'ext' or None, got {name!r}")
    old, _forced = _forced, name
    try:
        yield
    finally:
        _forced = old


def _use_ext(device):
    global _warned
    if _forced != "torch" and _ext_has(device.type):
        return True
    if _forced == "torch":
        return False
    why = (f"the extension iqa_vlm._C is not built ({_EXT_ERROR})" if ext is None
           else f"iqa_vlm._C was built without {device.type.upper()} support")
    if _forced == "ext" or REQUIRE_EXT:
        raise RuntimeError(f"level_cross_entropy: {why}; build it with: {BUILD_CMD}")
    if not _warned:
        _warned = True
        warnings.warn(f"level_cross_entropy: {why}; using the slower pure-PyTorch fallback. "
                      f"Build it with: {BUILD_CMD}", stacklevel=3)
    return False


# ----------------------------------------------------------------------------- public API

def level_cross_entropy(logits, target, level_ids=None, label_smoothing=0.0, smooth_over="vocab",
                        ignore_index=-100, inplace_backward=False, target_probs=None):
    """Per-row label-smoothed CE over the vocab (or, with target_probs, KL to soft level targets on the rows whose
    target is a level) plus the closed-set softmax. -> (loss [N], probs [N, K] | None)."""
    if smooth_over not in ("vocab", "levels"):
        raise ValueError(f"level_cross_entropy: smooth_over must be 'vocab' or 'levels', got {smooth_over!r}")
    smooth_levels = smooth_over == "levels"
    if smooth_levels and level_ids is None:
        raise ValueError("level_cross_entropy: smooth_over='levels' needs level_ids")
    if target_probs is not None and level_ids is None:
        raise ValueError("level_cross_entropy: target_probs needs level_ids")
    if _use_ext(logits.device):
        ids = level_ids if level_ids is not None else torch.empty(0, dtype=torch.long, device=logits.device)
        loss, probs, _ = torch.ops.iqa_vlm.level_ce_fwd(logits.contiguous(), target, ids, float(label_smoothing),
                                                        smooth_levels, int(ignore_index), bool(inplace_backward),
                                                        target_probs)
    else:
        loss, probs, _ = torch_level_cross_entropy(logits, target, level_ids, label_smoothing, smooth_levels,
                                                   ignore_index, target_probs=target_probs)
    return loss, (probs if level_ids is not None else None)


def level_scores(probs, weights=None):
    """Expected level: probs [N, K] @ weights (default 1..K, i.e. the 1-5 MOS scale for 5 levels)."""
    if weights is None:
        weights = torch.arange(1, probs.shape[-1] + 1, dtype=probs.dtype, device=probs.device)
    return probs @ torch.as_tensor(weights, dtype=probs.dtype, device=probs.device)


# ----------------------------------------------------------------------------- checks + fallback

def _check_meta(logits, target, level_ids, label_smoothing):
    """Shape / dtype / device checks, same messages as the C++ op (also run by the fake kernel)."""
    if logits.dim() != 2:
        raise RuntimeError(f"level_ce: logits must be 2-D [N, V], got shape {list(logits.shape)}")
    if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"level_ce: logits must be float32, bfloat16 or float16, got {logits.dtype}")
    if logits.shape[1] < 1:
        raise RuntimeError("level_ce: logits must have at least one column (V >= 1)")
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise RuntimeError(f"level_ce: target must be 1-D of length N={logits.shape[0]}, got shape {list(target.shape)}")
    if target.dtype != torch.long:
        raise TypeError(f"level_ce: target must be int64, got {target.dtype}")
    if target.device != logits.device:
        raise RuntimeError(f"level_ce: target must be on the logits' device {logits.device}, got {target.device}")
    if level_ids is not None:
        if level_ids.dim() != 1:
            raise RuntimeError(f"level_ce: level_ids must be 1-D [K], got shape {list(level_ids.shape)}")
        if level_ids.dtype != torch.long:
            raise TypeError(f"level_ce: level_ids must be int64, got {level_ids.dtype}")
        if level_ids.numel() and level_ids.device != logits.device:
            raise RuntimeError(f"level_ce: level_ids must be on the logits' device {logits.device}, got {level_ids.device}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"level_ce: label_smoothing must be in [0, 1), got {label_smoothing}")


def _check_probs_meta(logits, level_ids, target_probs, smooth_levels):
    """target_probs checks, same messages as the C++ op."""
    if target_probs is None:
        return
    K = 0 if level_ids is None else level_ids.numel()
    if smooth_levels:
        raise ValueError("level_ce: target_probs cannot be combined with smoothing over the levels")
    if K < 1:
        raise ValueError("level_ce: target_probs needs level_ids (K >= 1)")
    if target_probs.dim() != 2 or tuple(target_probs.shape) != (logits.shape[0], K):
        raise RuntimeError(f"level_ce: target_probs must be [N, K] = [{logits.shape[0]}, {K}], got shape "
                           f"{list(target_probs.shape)}")
    if not target_probs.is_floating_point():
        raise TypeError(f"level_ce: target_probs must be floating point, got {target_probs.dtype}")
    if target_probs.device != logits.device:
        raise RuntimeError(f"level_ce: target_probs must be on the logits' device {logits.device}, got {target_probs.device}")


def _check_probs_values(target_probs):
    bad = (~torch.isfinite(target_probs) | (target_probs < 0)).nonzero()
    if bad.numel():
        i, k = bad[0].tolist()
        raise ValueError(f"level_ce: target_probs[{i}, {k}]={float(target_probs[i, k])} must be finite and >= 0")


def _check_values(target, level_ids, V, ignore_index):
    bad = ((target != ignore_index) & ((target < 0) | (target >= V))).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise ValueError(f"level_ce: target[{i}]={int(target[i])} is out of range [0, {V}) "
                         f"and is not ignore_index={ignore_index}")
    if level_ids is not None:
        seen = set()
        for k, c in enumerate(level_ids.tolist()):
            if not 0 <= c < V:
                raise ValueError(f"level_ce: level_ids[{k}]={c} is out of range [0, {V})")
            if c in seen:
                raise ValueError(f"level_ce: level_ids has duplicate id {c}")
            seen.add(c)


def torch_level_cross_entropy(logits, target, level_ids=None, label_smoothing=0.0, smooth_levels=False,
                              ignore_index=-100, dtype=torch.float32, target_probs=None):
    """Pure-PyTorch version (differentiable by autograd), math in `dtype`. -> (loss, probs [N, K], lse)."""
    _check_meta(logits, target, level_ids, label_smoothing)
    _check_probs_meta(logits, level_ids, target_probs, smooth_levels)
    N, V = logits.shape
    if not torch.compiler.is_compiling():
        _check_values(target, level_ids, V, ignore_index)
        if target_probs is not None:
            _check_probs_values(target_probs)
    z = logits.to(dtype)
    valid = target != ignore_index
    t = torch.where(valid, target, torch.zeros_like(target))
    lse = torch.logsumexp(z, dim=1)
    nll = lse - z.gather(1, t[:, None]).squeeze(1)
    K = 0 if level_ids is None else level_ids.numel()
    zl = z[:, level_ids] if K else z.new_zeros(N, 0)
    probs = torch.softmax(zl.detach().float(), dim=1) if K else z.new_zeros(N, 0, dtype=torch.float32)
    eps = float(label_smoothing)
    if smooth_levels:  # smooth over the levels on rows whose target is a level, plain NLL elsewhere
        hit = (t[:, None] == level_ids[None, :]).any(1) if K else torch.zeros_like(valid)
        smooth = lse - (zl.mean(1) if K else torch.zeros_like(lse))
        loss = torch.where(hit, (1 - eps) * nll + eps * smooth, nll)
    else:
        loss = (1 - eps) * nll + eps * (lse - z.mean(1)) if eps > 0 else nll
    if target_probs is not None:  # soft rows: KL(P || softmax(z)[L]) = sum P log P - sum P (z_L - lse)
        P = target_probs.to(dtype)
        soft = (t[:, None] == level_ids[None, :]).any(1)
        kl = torch.xlogy(P, P).sum(1) - (P * (zl - lse[:, None])).sum(1)
        loss = torch.where(soft, kl, loss)
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    return loss.float(), probs, lse.detach().float()


# ----------------------------------------------------------------------------- op registration

if ext is not None:

    @torch.library.register_fake("iqa_vlm::level_ce_fwd")
    def _fwd_fake(logits, target, level_ids, label_smoothing, smooth_levels, ignore_index, inplace_backward=False,
                  target_probs=None):
        _check_meta(logits, target, level_ids, label_smoothing)
        _check_probs_meta(logits, level_ids, target_probs, smooth_levels)
        N, K = logits.shape[0], level_ids.shape[0]
        f32 = dict(dtype=torch.float32, device=logits.device)
        return logits.new_empty(N, **f32), logits.new_empty((N, K), **f32), logits.new_empty(N, **f32)

    @torch.library.register_fake("iqa_vlm::level_ce_bwd")
    def _bwd_fake(grad_loss, logits, target, level_ids, lse, label_smoothing, smooth_levels, ignore_index,
                  target_probs=None):
        _check_meta(logits, target, level_ids, label_smoothing)
        _check_probs_meta(logits, level_ids, target_probs, smooth_levels)
        return torch.empty_like(logits, memory_format=torch.contiguous_format)

    @torch.library.register_fake("iqa_vlm::level_ce_bwd_")
    def _bwd_inplace_fake(grad_loss, logits, target, level_ids, lse, label_smoothing, smooth_levels, ignore_index,
                          target_probs=None):
        _check_meta(logits, target, level_ids, label_smoothing)
        _check_probs_meta(logits, level_ids, target_probs, smooth_levels)

    def _setup_context(ctx, inputs, output):
        logits, target, level_ids, label_smoothing, smooth_levels, ignore_index, *rest = inputs
        inplace = rest[0] if rest else False
        target_probs = rest[1] if len(rest) > 1 else None
        ctx.save_for_backward(logits, target, level_ids, output[2], target_probs)
        ctx.args = (label_smoothing, smooth_levels, ignore_index)
        ctx.inplace = bool(inplace)
        ctx.mark_non_differentiable(output[1], output[2])

    def _backward(ctx, grad_loss, grad_probs, grad_lse):
        logits, target, level_ids, lse, target_probs = ctx.saved_tensors
        if grad_loss is None:
            return (None,) * 8
        if ctx.inplace:
            torch.ops.iqa_vlm.level_ce_bwd_(grad_loss, logits, target, level_ids, lse, *ctx.args, target_probs)
            grad = logits
        else:
            grad = torch.ops.iqa_vlm.level_ce_bwd(grad_loss, logits, target, level_ids, lse, *ctx.args, target_probs)
        return grad, None, None, None, None, None, None, None  # target_probs gets none: soft labels are data

    torch.library.register_autograd("iqa_vlm::level_ce_fwd", _backward, setup_context=_setup_context)
