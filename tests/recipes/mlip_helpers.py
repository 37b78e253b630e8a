"""What the tests of the recipes' losses (``mlip_liu/``, ``mlip_li/``, ``unimlip/test_losses.py``) and
of the modules they share (``test_ops.py``, ``test_config.py``) have in common: the independent
references, written out here, the loss inputs, the distributed defaults held against ClipLoss's, two
ranks run in one process, an MLIP (Li) model builder, a recorder of ``random_patch_mask`` calls and
the reader of open_clip_train's log. Imported as ``mlip_helpers`` (``tests/recipes/conftest.py`` puts this
folder on the path, as ``tests/conftest.py`` does for ``paths`` and ``shards``)."""
import inspect
import os
import re

import open_clip
import torch
import torch.nn.functional as F

from openclip_unimlip.recipes import ops

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


# ----- independent references ----------------------------------------------------------------------
def ce(logits, target):
    """One row's cross-entropy, written out."""
    return -(logits[target] - torch.logsumexp(logits, dim=0))


def mean_of_both_directions(a, b, scale):
    """Symmetric InfoNCE, the mean of the row and the column direction (OpenCLIP's ClipLoss)."""
    logits = scale * a @ b.T
    n = logits.shape[0]
    return (sum(ce(logits[i], i) for i in range(n)) + sum(ce(logits[:, j], j) for j in range(n))) / (2 * n)


def sinkhorn(sim, column_mask, epsilon, iterations):
    """Sinkhorn-Knopp in the probability domain, float64, one (N, S) problem: rows 1/N, real columns 1/S."""
    sim, column_mask = sim.double(), column_mask.bool()
    kernel = torch.exp(sim / epsilon) * column_mask
    mu = torch.full((sim.shape[0],), 1.0 / sim.shape[0], dtype=torch.float64)
    nu = column_mask.double() / column_mask.sum()
    v = torch.ones(sim.shape[1], dtype=torch.float64)
    for _ in range(iterations):
        u = mu / (kernel @ v)
        v = torch.where(column_mask, nu / (kernel.T @ u), torch.zeros_like(nu))
    return u[:, None] * kernel * v[None, :]


def swav_codes(scores, epsilon, iterations):
    """SwAV's Sinkhorn-Knopp codes [B, K] of ``scores`` [B, K], float64: prototypes get mass 1/K, each
    iteration ends on the samples (a sample's codes sum to 1). Shifted by the maximum, which the first
    normalisation cancels, so that sharp scores do not overflow."""
    q = torch.exp((scores.double() - scores.double().max()) / epsilon).T  # [K, B]
    q /= q.sum()
    num_prototypes, batch = q.shape
    for _ in range(iterations):
        q /= q.sum(1, keepdim=True) * num_prototypes
        q /= q.sum(0, keepdim=True) * batch
    return (q * batch).T


# ----- the losses' inputs ----------------------------------------------------------------------------
def unit(generator, *shape):
    return F.normalize(torch.randn(*shape, generator=generator), dim=-1)


def liu_inputs(seed=0):
    """What the MLIP (Liu) model hands its loss: a batch of 4, 5 patches, 3 sentence slots (3 filled in
    two samples, 2 and 1 in the others)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[0, 2] = mask[1, 1:] = False
    return dict(image_features=unit(g, 4, 8), text_features=unit(g, 4, 8), logit_scale=torch.tensor(10.0),
                integrity_weights=torch.rand(4, generator=g) + 0.5, patch_embeddings=unit(g, 4, 5, 8),
                sentence_embeddings=unit(g, 4, 3, 8), sentence_mask=mask,
                reconstruction=torch.randn(4, 6, 12, generator=g),
                reconstruction_target=torch.randn(4, 6, 12, generator=g))


def li_inputs(seed=0):
    """What the MLIP (Li) model hands its loss: a batch of 4, 6 tokens ([CLS] and the last two without
    weight), 5 patches, 7 prototypes."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(4, 6, generator=g)
    weights[:, 0] = weights[:, -2:] = 0
    weights = weights / weights.sum(1, keepdim=True)
    image, text, prototypes = unit(g, 4, 8), unit(g, 4, 8), unit(g, 7, 8)
    return dict(image_features=image, text_features=text, logit_scale=torch.tensor(10.0),
                divergence_image_features=unit(g, 4, 8), divergence_text_features=unit(g, 4, 8),
                token_embeddings=unit(g, 4, 6, 8), token_weights=weights, patch_embeddings=unit(g, 4, 5, 8),
                image_prototype_scores=image @ prototypes.T, text_prototype_scores=text @ prototypes.T)


# ----- models --------------------------------------------------------------------------------------
def build_li_model(knowledge_file):
    import open_clip

    return open_clip.create_model("mlip-li-tiny", output_dict=True, mlip_li_cfg={"knowledge_file": knowledge_file})


class RecordedMasks:
    """Wraps ``ops.random_patch_mask`` where a model module imported it; records each call."""

    def __init__(self):
        self.calls = []

    def __call__(self, batch, num_patches, mask_ratio, device=None):
        keep, masked = ops.random_patch_mask(batch, num_patches, mask_ratio, device=device)
        self.calls.append({"mask_ratio": mask_ratio, "keep": keep, "masked": masked})
        return keep, masked


# ----- end to end through open_clip_train --------------------------------------------------------
def logged(log_text, key):
    return [float(v) for v in re.findall(rf"{key}: ([0-9.]+) \(", log_text)]


def defaults_unlike_clip_loss(loss_class) -> list:
    """The distributed arguments whose default in ``loss_class`` differs from OpenCLIP's ClipLoss's."""
    ours = inspect.signature(loss_class.__init__).parameters
    clip = inspect.signature(open_clip.ClipLoss.__init__).parameters
    return [name for name in ("local_loss", "gather_with_grad", "rank", "world_size")
            if ours[name].default != clip[name].default]


# ----- two ranks in one process ------------------------------------------------------------------------
def joined(first: dict, second: dict) -> dict:
    """Two loss-input dicts as one batch (the first's rows first); scalars from the second."""
    return {k: torch.cat([first[k], v]) if v.ndim else v for k, v in second.items()}


def two_ranks_in_one_process(monkeypatch, make_loss, halves, modules):
    """Each rank's loss outputs (``output_dict``) for ``halves[rank]``, the two ranks run one after the
    other in this process. ``gather_batch`` and ``all_reduce_sum`` (patched where ``modules`` bind them)
    answer as the collectives would: a first pass records what each rank hands its k-th collective;
    in the second, a gather returns both ranks' tensors in rank order (this rank's own, live, in its
    slot) and a sum adds the other rank's values."""
    sent = [[], []]

    def patch(gather, reduce):
        for module in modules:
            for name, fake in (("gather_batch", gather), ("all_reduce_sum", reduce)):
                if hasattr(module, name):
                    monkeypatch.setattr(module, name, fake)

    for rank, half in enumerate(halves):
        patch(lambda tensors, *args, rank=rank, **kwargs: sent[rank].append([t.detach() for t in tensors])
              or list(tensors),
              lambda values, world_size, rank=rank: sent[rank].append(values.detach()) or values)
        make_loss(rank)(**half)
    outputs = []
    for rank, half in enumerate(halves):
        calls = iter(range(len(sent[rank])))
        other = 1 - rank

        def gather(tensors, *args, rank=rank, calls=calls, **kwargs):
            k = next(calls)
            return [torch.cat([t if r == rank else sent[r][k][i] for r in (0, 1)]) for i, t in enumerate(tensors)]

        def reduce(values, world_size, calls=calls, other=other):
            return values + sent[other][next(calls)]

        patch(gather, reduce)
        outputs.append(make_loss(rank)(**half, output_dict=True))
    return outputs
