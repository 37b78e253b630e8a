"""Both MLIP losses on 2 gloo ranks at batch B against 1 process at batch 2B, term by term, under
every supported flag set: the gradient DDP applies (the mean over ranks) equals the global-batch
gradient, and the mean of the ranks' logged values is the global value."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from openclip_unimlip.recipes.mlip_li.config import LI_TERMS
from openclip_unimlip.recipes.mlip_li.loss import MlipLiLoss
from openclip_unimlip.recipes.mlip_liu.config import LIU_TERMS
from openclip_unimlip.recipes.mlip_liu.loss import MlipLiuLoss

BATCH = 8  # the global batch; each of the 2 ranks holds half
FLAG_SETS = {"default": dict(local_loss=False, gather_with_grad=False),
             "gather_with_grad": dict(local_loss=False, gather_with_grad=True),
             "local_loss": dict(local_loss=True, gather_with_grad=True)}


def _liu_inputs():
    g = torch.Generator().manual_seed(5)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    mask = torch.ones(BATCH, 3, dtype=torch.bool)
    mask[0, 2] = mask[5, 1:] = False
    return dict(image_features=unit(BATCH, 6), text_features=unit(BATCH, 6), logit_scale=torch.tensor(4.0),
                integrity_weights=torch.rand(BATCH, generator=g) + 0.3, patch_embeddings=unit(BATCH, 4, 6),
                sentence_embeddings=unit(BATCH, 3, 6), sentence_mask=mask,
                reconstruction=torch.randn(BATCH, 5, 12, generator=g),
                reconstruction_target=torch.randn(BATCH, 5, 12, generator=g))


def _li_inputs():
    g = torch.Generator().manual_seed(6)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    weights = torch.rand(BATCH, 5, generator=g)
    weights[:, 0] = weights[:, -1] = 0
    weights[3, 3:] = 0  # samples hold different numbers of tokens
    weights[6] = 0  # an empty caption: the local term's global count differs from the batch
    weights = weights / weights.sum(1, keepdim=True).clamp(min=1e-12)
    image, text = unit(BATCH, 6), unit(BATCH, 6)
    prototypes = unit(7, 6)
    return dict(image_features=image, text_features=text, logit_scale=torch.tensor(4.0),
                divergence_image_features=unit(BATCH, 6), divergence_text_features=unit(BATCH, 6),
                token_embeddings=unit(BATCH, 5, 6), token_weights=weights, patch_embeddings=unit(BATCH, 4, 6),
                image_prototype_scores=image @ prototypes.T, text_prototype_scores=text @ prototypes.T)


RECIPES = {"liu": (MlipLiuLoss, _liu_inputs, LIU_TERMS, dict(ot_iterations=5, ot_tolerance=0.0)),
           "li": (MlipLiLoss, _li_inputs, LI_TERMS, {})}
NO_GRAD = {"sentence_mask", "reconstruction_target", "token_weights"}


def _leaves(inputs, rows=None):
    out = {}
    for key, value in inputs.items():
        if value.ndim and rows is not None:
            value = value[rows]
        value = value.clone()
        if key not in NO_GRAD and value.is_floating_point():
            value.requires_grad_()
        out[key] = value
    return out


def _term_run(recipe, term, inputs, **flags):
    """(value, {input: grad}) of one term alone."""
    cls, _, terms, options = RECIPES[recipe]
    loss = cls(weights={t: float(t == term) for t in terms}, **options, **flags)
    value = loss(**inputs, output_dict=True)[f"{term}_loss"]
    value.backward()
    # an input the term does not use has no gradient on one process, a zero one where it was gathered
    return value.item(), {k: torch.zeros_like(v) if v.grad is None else v.grad.clone()
                          for k, v in inputs.items() if v.requires_grad}


def _worker(rank, world_size, port, out_dir):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    half = BATCH // world_size
    rows = slice(rank * half, (rank + 1) * half)
    results = {}
    for recipe, (_, make_inputs, terms, _) in RECIPES.items():
        for term in terms:
            for flag_name, flags in FLAG_SETS.items():
                results[recipe, term, flag_name] = _term_run(recipe, term, _leaves(make_inputs(), rows),
                                                             rank=rank, world_size=world_size, **flags)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, str(out))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("flag_name", list(FLAG_SETS))
@pytest.mark.parametrize("recipe, term", [("liu", t) for t in LIU_TERMS] + [("li", t) for t in LI_TERMS])
def test_two_ranks_match_one_process_at_the_double_batch(two_rank_results, recipe, term, flag_name):
    reference_value, reference_grads = _term_run(recipe, term, _leaves(RECIPES[recipe][1]()))
    half = BATCH // 2
    values = [two_rank_results[r][recipe, term, flag_name][0] for r in range(2)]
    grads = [two_rank_results[r][recipe, term, flag_name][1] for r in range(2)]
    assert sum(values) / 2 == pytest.approx(reference_value, abs=1e-5)
    assert set(grads[0]) == set(reference_grads)
    for key, reference in reference_grads.items():
        if reference.ndim == 0:  # a parameter (logit_scale): DDP averages its gradient over ranks
            torch.testing.assert_close((grads[0][key] + grads[1][key]) / 2, reference, atol=1e-6, rtol=1e-4,
                                       msg=key)
            continue
        for rank in range(2):
            # a feature's gradient flows into the rank's parameters, whose gradient DDP divides by 2
            torch.testing.assert_close(grads[rank][key] / 2, reference[rank * half:(rank + 1) * half],
                                       atol=1e-6, rtol=1e-4, msg=f"{key} rank {rank}")


def test_local_loss_without_gather_with_grad_is_refused_on_several_ranks():
    for cls in (MlipLiuLoss, MlipLiLoss):
        with pytest.raises(ValueError, match="--gather-with-grad"):
            cls(local_loss=True, gather_with_grad=False, rank=0, world_size=2)
        cls(local_loss=True, gather_with_grad=False, rank=0, world_size=1)  # one process: nothing to gather
