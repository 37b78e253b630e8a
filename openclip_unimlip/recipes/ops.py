"""Tensor operations the recipes share: patch masking and MAE pixel targets (``random_patch_mask``,
``keep_mask``, ``gather_tokens``, ``patchify``, ``normalize_patches``), ViT passes over a patch subset
(``vit_tokens``, ``project_tokens``), sentence pooling (``sentence_boundaries``, ``sentence_segments``,
``pool_sentences``), entropic transport plans (``sinkhorn_plan``), SwAV codes (``swav_codes``) and
contrastive logits (``info_nce``; ``paired_logits``, which the Uni-Mlip loss uses too). The two MLIP
recipes use the rest.

See docs/methods/mlip-liu.md and mlip-li.md for which of these the papers state and which are ours.
"""
import warnings
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer

# Large negative log-mass for padding entries: exp() of it is exactly 0 in fp32, and unlike
# -inf it never produces inf - inf = nan inside logsumexp.
_MASKED_LOG = -1e4


def random_patch_mask(batch: int, num_patches: int, mask_ratio: float,
                      device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Indices of the kept and of the masked patches, uniformly at random per sample (MAE).

    Returns ``keep`` [B, K] and ``masked`` [B, N - K], each sorted so that kept tokens stay in
    raster order.
    """
    num_keep = max(1, round(num_patches * (1.0 - mask_ratio)))
    order = torch.rand(batch, num_patches, device=device).argsort(dim=1)
    keep, masked = order[:, :num_keep], order[:, num_keep:]
    return keep.sort(dim=1).values, masked.sort(dim=1).values


def keep_mask(keep: torch.Tensor, num_patches: int) -> torch.Tensor:
    """[B, N] float, 1 at kept patches: the integrity estimator's input."""
    mask = torch.zeros(keep.shape[0], num_patches, device=keep.device)
    return mask.scatter_(1, keep, 1.0)


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tokens [B, N, C] at index [B, K] -> [B, K, C]."""
    return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, patch_size² · C], patches in the ViT's raster order."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch standardised pixels: MAE's ``norm_pix_loss`` target."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=True)
    return (patches - mean) / (var + eps).sqrt()


def vit_tokens(visual: VisionTransformer, images: torch.Tensor, keep: Optional[torch.Tensor] = None):
    """OpenCLIP's ViT forward on all patches, or only on ``keep`` [B, K] (with the class token).

    Returns ``(pooled, tokens)``: the projected pooled embedding, exactly what
    ``visual(images)`` returns when ``keep`` is None, and the ln_post-ed patch tokens
    [B, K, width] before the projection. Uses the tower's own modules, so weights loaded
    into OpenCLIP's ViT (and its grad checkpointing) apply unchanged.
    """
    x = visual.conv1(images).flatten(2).transpose(1, 2)  # [B, N, width]
    pos = visual.positional_embedding.to(x.dtype)
    x = x + pos[1:]
    if keep is not None:
        x = gather_tokens(x, keep)
    cls = (visual.class_embedding + pos[0]).to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    if keep is None:
        x = visual.patch_dropout(x)
    x = visual.ln_pre(x)
    x = visual.transformer(x)
    pooled, tokens = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled, tokens


def project_tokens(visual: VisionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    return tokens @ visual.proj if visual.proj is not None else tokens


def sentence_boundaries(
        input_ids: torch.Tensor,
        is_delimiter: torch.Tensor,
        keeps_period: torch.Tensor,
        is_number: torch.Tensor,
        opens_item: torch.Tensor,
) -> torch.Tensor:
    """[B, L] True at the delimiter tokens that end a sentence. The other arguments are [vocab]
    boolean lookups of token ids. A delimiter does not end its sentence

    - between two numbers, a decimal ("2.5 cm" is ``2 . 5 cm``);
    - after an abbreviation or a single letter (``keeps_period``: "approx. 2 cm", "e.g. granuloma");
    - after the number of a list item that opens a sentence ("1. No pneumothorax. 2. ..."), i.e. a
      number that follows an ``opens_item`` token (special tokens such as [CLS], delimiters that are no
      decimal point, a colon).

    Word pieces of BERT tokenizers keep their "##" prefix in the lookups' vocabulary.
    """
    delimiters = is_delimiter[input_ids]
    start = torch.zeros_like(input_ids[:, :1])  # before the first token: id 0, a special token in BERT vocabularies
    previous = torch.cat([start, input_ids[:, :-1]], dim=1)
    following = torch.cat([input_ids[:, 1:], start], dim=1)
    before_previous = torch.cat([start, start, input_ids[:, :-2]], dim=1)[:, :input_ids.shape[1]]
    decimal = delimiters & is_number[previous] & is_number[following]
    abbreviation = keeps_period[previous]
    after_decimal = torch.cat([torch.zeros_like(decimal[:, :2]), decimal[:, :-2]], dim=1)  # "at 10.30." ends
    item_number = is_number[previous] & opens_item[before_previous] & ~after_decimal
    return delimiters & ~decimal & ~abbreviation & ~item_number


def sentence_segments(boundaries: torch.Tensor, content: torch.Tensor, max_sentences: int) -> torch.Tensor:
    """One-hot sentence membership [B, S, L] of each token, split after ``boundaries`` [B, L].

    A boundary token belongs to the sentence it ends; tokens outside ``content`` [B, L] ([CLS],
    [SEP], pads) belong to none; sentences past ``max_sentences`` are merged into the last one.
    """
    index = (boundaries.long().cumsum(dim=1) - boundaries.long()).clamp(max=max_sentences - 1)
    sentences = torch.arange(max_sentences, device=boundaries.device)
    return (index.unsqueeze(1) == sentences[None, :, None]) & content.unsqueeze(1)


def pool_sentences(hidden: torch.Tensor, segments: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean hidden state per sentence [B, S, W] and the mask of non-empty sentences [B, S].

    A caption without any content token keeps sentence 0 (a zero vector) valid, so every
    caption has at least one sentence for the transport plan.
    """
    weights = segments.to(hidden.dtype)
    counts = weights.sum(dim=-1)
    pooled = weights @ hidden / counts.clamp(min=1).unsqueeze(-1)
    valid = counts > 0
    valid[:, 0] |= ~valid.any(dim=1)
    return pooled, valid


def _unconverged(what: str, error: float, tolerance: float, iterations: int) -> None:
    # stacklevel 4: past this function, the Sinkhorn function and torch.no_grad's decorator frame, to
    # the loss line that asked for the plan
    warnings.warn(f"{what}: relative marginal error {error:.2e} after {iterations} Sinkhorn iterations, above the "
                  f"tolerance {tolerance:g}; raise the iterations or epsilon", RuntimeWarning, stacklevel=4)


@torch.no_grad()
def sinkhorn_plan(cost_sim: torch.Tensor, column_mask: torch.Tensor, epsilon: float, iterations: int,
                  tolerance: float = 0.0) -> torch.Tensor:
    """Entropic OT plan maximising Σ T ⊙ sim with uniform marginals, in the log domain.

    ``cost_sim`` [..., N, S] similarities; ``column_mask`` [..., S] (broadcastable) marks the
    real columns. Rows get mass 1/N, real columns 1/S_real, masked columns none. Each iteration
    ends on the column update, so the column marginal is exact and the row marginal approximate.
    With ``tolerance`` > 0 it stops once every row's mass is within ``tolerance`` (relative) of
    1/N, and warns if ``iterations`` run out first; with 0 it runs exactly ``iterations``.
    """
    sim = cost_sim.float()
    column_mask = column_mask.expand(*sim.shape[:-2], sim.shape[-1])
    n = sim.shape[-2]
    log_mu = torch.full(sim.shape[:-1], -torch.log(torch.tensor(float(n))).item(), device=sim.device)
    real = column_mask.sum(dim=-1, keepdim=True).clamp(min=1).float()
    log_nu = torch.where(column_mask, -real.log(), torch.full_like(real, _MASKED_LOG))
    log_kernel = (sim / epsilon).masked_fill(~column_mask.unsqueeze(-2), _MASKED_LOG)
    f = torch.zeros_like(log_mu)
    g = torch.zeros_like(log_nu)
    error = float("inf")
    for _ in range(iterations):
        f = log_mu - torch.logsumexp(log_kernel + g.unsqueeze(-2), dim=-1)
        g = log_nu - torch.logsumexp(log_kernel + f.unsqueeze(-1), dim=-2)
        if tolerance > 0:
            row_log_mass = f + torch.logsumexp(log_kernel + g.unsqueeze(-2), dim=-1)
            error = torch.expm1(row_log_mass - log_mu).abs().max().item() if row_log_mass.numel() else 0.0
            if error <= tolerance:
                break
    if tolerance > 0 and error > tolerance:
        _unconverged("patch-sentence transport", error, tolerance, iterations)
    return torch.exp(log_kernel + f.unsqueeze(-1) + g.unsqueeze(-2))


@torch.no_grad()
def swav_codes(scores: torch.Tensor, epsilon: float, iterations: int, tolerance: float = 0.0) -> torch.Tensor:
    """SwAV soft assignments [B, K] of ``scores`` [B, K]: each row sums to 1, and the
    prototypes share the batch's mass equally (Sinkhorn-Knopp; each iteration ends on the sample
    update, so a sample's codes sum to 1 exactly and a prototype's mass is approximately 1/K).
    ``tolerance`` as in ``sinkhorn_plan``, on the prototypes' masses."""
    q = torch.exp((scores.float() - scores.float().max()) / epsilon).T  # [K, B]
    num_prototypes, batch = q.shape
    q /= q.sum()
    error = float("inf")
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True) * num_prototypes
        q /= q.sum(dim=0, keepdim=True) * batch
        if tolerance > 0:
            error = (q.sum(dim=1) * num_prototypes - 1).abs().max().item()
            if error <= tolerance:
                break
    if tolerance > 0 and error > tolerance:
        _unconverged("prototype codes", error, tolerance, iterations)
    return (q * batch).T


def info_nce(a: torch.Tensor, b: torch.Tensor, a_all: torch.Tensor, b_all: torch.Tensor, scale,
             local_loss: bool, rank: int) -> torch.Tensor:
    """Symmetric InfoNCE between row-paired ``a`` and ``b``, as OpenCLIP's ``ClipLoss``
    (``*_all`` are the gathered batches; with ``local_loss`` only local rows are scored)."""
    logits_a, logits_b, labels = paired_logits(a, b, a_all, b_all, scale, local_loss, rank)
    return (F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_b, labels)) / 2


def paired_logits(a, b, a_all, b_all, scale, local_loss: bool, rank: int):
    if local_loss and a_all.shape[0] != a.shape[0]:
        labels = torch.arange(a.shape[0], device=a.device) + a.shape[0] * rank
        return scale * a @ b_all.T, scale * b @ a_all.T, labels
    logits = scale * a_all @ b_all.T
    return logits, logits.T, torch.arange(a_all.shape[0], device=a.device)
