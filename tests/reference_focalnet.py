"""A straightforward FocalNet forward, written independently of the project's fast path.

It runs the modulation in channels-first (B, C, H, W) tensors with explicit layout copies, keeps
tokens as (B, H*W, C) between blocks, and uses the parameters of a project ``FocalNet`` by name, so the
two can be compared under identical weights. Semantics: the classification model the checkpoints
were trained with (post-LN, layerscale, normalize-modulator, post-LN in modulation, conv stem pad 2).
"""
import torch
import torch.nn.functional as F


def _ln(x, p, prefix):
    return F.layer_norm(x, x.shape[-1:], p[prefix + ".weight"], p[prefix + ".bias"], eps=1e-5)


def _lin(x, p, prefix):
    return F.linear(x, p[prefix + ".weight"], p[prefix + ".bias"])


def _modulation(x, p, prefix, level, normalize, postln_in_mod):
    """x: (B, H, W, C)."""
    C = x.shape[-1]
    y = _lin(x, p, prefix + ".f").permute(0, 3, 1, 2).contiguous()  # B, 2C+L+1, H, W
    q, ctx, gates = y[:, :C], y[:, C : 2 * C], y[:, 2 * C :]
    ctx_all = torch.zeros_like(ctx)
    for l in range(level):
        w = p[f"{prefix}.focal_layers.{l}.0.weight"]
        ctx = F.gelu(F.conv2d(ctx, w, padding=w.shape[-1] // 2, groups=C))
        ctx_all = ctx_all + ctx * gates[:, l : l + 1]
    glob = F.gelu(ctx.mean(2, keepdim=True).mean(3, keepdim=True))
    ctx_all = ctx_all + glob * gates[:, level:]
    if normalize:
        ctx_all = ctx_all / (level + 1)
    modulator = F.conv2d(ctx_all, p[prefix + ".h.weight"], p[prefix + ".h.bias"])
    out = (q * modulator).permute(0, 2, 3, 1).contiguous()
    if postln_in_mod:
        out = _ln(out, p, prefix + ".ln")
    return _lin(out, p, prefix + ".proj")


def _embed(x, p, prefix, patch, conv_embed, is_stem):
    """x: (B, C, H, W) -> (B, H', W', C')."""
    H, W = x.shape[-2:]
    x = F.pad(x, (0, (patch - W % patch) % patch, 0, (patch - H % patch) % patch))
    if conv_embed:
        k, s, pad = (7, 4, 2) if is_stem else (3, 2, 1)
    else:
        k, s, pad = patch, patch, 0
    x = F.conv2d(x, p[prefix + ".proj.weight"], p[prefix + ".proj.bias"], stride=s, padding=pad)
    return _ln(x.permute(0, 2, 3, 1), p, prefix + ".norm")


def reference_forward(model, x, depths, levels, conv_embed=False, postln=False, layerscale=False,
                      normalize=False, postln_in_mod=False):
    """Stage outputs {res2..res5} (NCHW, through norm{i}) of ``model``'s weights, computed plainly."""
    p = dict(model.named_parameters())
    out = {}
    t = _embed(x, p, "patch_embed", 4, conv_embed, True)
    for i, depth in enumerate(depths):
        for j in range(depth):
            b = f"layers.{i}.blocks.{j}"
            g1 = p[b + ".gamma_1"] if layerscale else 1.0
            g2 = p[b + ".gamma_2"] if layerscale else 1.0
            mod = lambda z: _modulation(z, p, b + ".modulation", levels[i], normalize, postln_in_mod)  # noqa: E731
            mlp = lambda z: _lin(F.gelu(_lin(z, p, b + ".mlp.fc1")), p, b + ".mlp.fc2")  # noqa: E731
            if postln:
                t = t + g1 * _ln(mod(t), p, b + ".norm1")
                t = t + g2 * _ln(mlp(t), p, b + ".norm2")
            else:
                t = t + g1 * mod(_ln(t, p, b + ".norm1"))
                t = t + g2 * mlp(_ln(t, p, b + ".norm2"))
        out[f"res{i + 2}"] = _ln(t, p, f"norm{i}").permute(0, 3, 1, 2)
        if i < len(depths) - 1:
            t = _embed(t.permute(0, 3, 1, 2), p, f"layers.{i}.downsample", 2, conv_embed, False)
    return out
