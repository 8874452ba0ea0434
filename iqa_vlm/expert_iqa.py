"""Classical full-reference IQA (the expert baselines of the prompting study's Table 2): PSNR, SSIM, MS-SSIM, with
IQA-PyTorch's conventions (the library the study's authors use for their expert models): PSNR over the RGB channels on
[0, 1]; SSIM and MS-SSIM on the rounded luma (Y of YIQ) on [0, 255], an 11 x 11 Gaussian window of sigma 1.5, 'valid'
filtering, no pre-downsampling; MS-SSIM over 5 scales (2 x 2 average pooling) with Wang et al.'s weights, product form.
Computed in float64.

    from iqa_vlm.expert_iqa import fr_scores
    scores = fr_scores("dist.png", "ref.png")       # {"psnr": ..., "ssim": ..., "ms_ssim": ...}

The NR experts of Table 3 (NIQE, MUSIQ, MANIQA, LIQE) and the learned FR ones (FSIM aside: LPIPS, AHIQ, DISTS) need
parameters or network weights that their libraries download; none can be fetched here, so they are not offered.
"""
import numpy as np
import torch
import torch.nn.functional as F

from iqa_vlm.data import load_image

EXPERTS = ("psnr", "ssim", "ms_ssim")
MS_SSIM_WEIGHTS = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]


def _rgb01(path):
    """[1, 3, H, W] float64 on [0, 1]."""
    arr = np.asarray(load_image(path), dtype=np.float64) / 255.0  # read as every model reads it (EXIF, 16-bit)
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def luma255(x):
    """Y of YIQ (0.299 R + 0.587 G + 0.114 B) on [0, 255], rounded, as IQA-PyTorch's to_y_channel."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    return ((x * w).sum(1, keepdim=True) * 255).round()


def gaussian_window(size=11, sigma=1.5):
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax ** 2) / (2 * sigma ** 2))
    w = g[:, None] * g[None, :]
    return (w / w.sum())[None, None]


def ssim_terms(x, y, data_range=255.0):
    """(mean SSIM, mean contrast-structure term) of two [1, 1, H, W] images ('valid' filtering)."""
    win = gaussian_window()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu1, mu2 = F.conv2d(x, win), F.conv2d(y, win)
    s11 = F.conv2d(x * x, win) - mu1 ** 2
    s22 = F.conv2d(y * y, win) - mu2 ** 2
    s12 = F.conv2d(x * y, win) - mu1 * mu2
    cs = (2 * s12 + c2) / (s11 + s22 + c2)
    ssim_map = (2 * mu1 * mu2 + c1) / (mu1 ** 2 + mu2 ** 2 + c1) * cs
    return float(ssim_map.mean()), float(cs.mean())


def psnr(x, y, eps=1e-8):
    return float(10 * torch.log10(1.0 / (((x - y) ** 2).mean() + eps)))


def ssim(x, y):
    return ssim_terms(luma255(x), luma255(y))[0]


def ms_ssim(x, y, weights=MS_SSIM_WEIGHTS):
    """prod_{scales < last} cs^w * ssim_last^w_last; each scale halves the image by 2 x 2 average pooling (odd sides
    zero-padded by one, as IQA-PyTorch). A negative cs (or last-scale SSIM) is taken as 0 (our choice, as pytorch-msssim's relu: a
    fractional power of it has no real value). Images need at least 11 * 2^(scales-1) pixels a side (176 for 5 scales)."""
    a, b = luma255(x), luma255(y)
    if min(a.shape[-2:]) < 11 * 2 ** (len(weights) - 1):
        raise ValueError(f"MS-SSIM over {len(weights)} scales needs images of at least {11 * 2 ** (len(weights) - 1)} "
                         f"pixels a side, got {tuple(a.shape[-2:])}")
    value = 1.0
    for k, w in enumerate(weights):
        s, cs = ssim_terms(a, b)
        value *= max(s if k == len(weights) - 1 else cs, 0.0) ** w
        pad = (a.shape[2] % 2, a.shape[3] % 2)
        a, b = F.avg_pool2d(a, 2, padding=pad), F.avg_pool2d(b, 2, padding=pad)
    return value


def fr_scores(dist, ref, which=EXPERTS):
    """{expert: score} of a distorted image against its reference (paths); higher = better for all three. MS-SSIM is
    None for images too small for its five scales."""
    x, y = _rgb01(dist), _rgb01(ref)
    if x.shape != y.shape:
        raise ValueError(f"{dist} {tuple(x.shape[-2:])} and its reference {ref} {tuple(y.shape[-2:])} differ in size")
    out = {}
    for name in which:
        if name == "psnr":
            out[name] = psnr(x, y)
        elif name == "ssim":
            out[name] = ssim(x, y)
        elif name == "ms_ssim":
            out[name] = ms_ssim(x, y) if min(x.shape[-2:]) >= 176 else None
        else:
            raise ValueError(f"unknown expert {name!r}; have {EXPERTS}")
    return out
