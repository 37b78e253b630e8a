"""The Uni-Mlip loss on 2 gloo ranks against the same global batch on 1 rank.

Semantics under test (``openclip_unimlip/recipes/unimlip/loss.py``): for every term alone, every subset of
terms, and every supported OpenCLIP flag set, the parameter gradient DDP applies (the mean over
ranks, computed here with a plain ``all_reduce``) equals the gradient of the loss on the whole
batch at world size 1, i.e. a ratio of 1. Feature maps are tiny linear layers; the loss is the
real ``UniMlipLoss``. One spawn of two processes runs every case; results come back as files.
"""
import datetime
import itertools
import math
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from openclip_unimlip.recipes.unimlip.config import TERMS
from openclip_unimlip.recipes.unimlip.loss import UniMlipLoss

WORLD = 2
LOCAL_BATCH = 4
IN_DIM, DIM, VOCAB, K = 6, 5, 13, 3

FLAG_SETS = {
    "default": dict(local_loss=False, gather_with_grad=False),
    "gather_with_grad": dict(local_loss=False, gather_with_grad=True),
    "local_loss+gather_with_grad": dict(local_loss=True, gather_with_grad=True),
}
REFUSED = dict(local_loss=True, gather_with_grad=False)


class _Towers(nn.Module):
    """Linear feature maps standing in for the towers: every model output the loss takes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image = nn.Linear(IN_DIM, DIM)
        self.text = nn.Linear(IN_DIM, DIM)
        self.vocab = nn.Linear(IN_DIM, VOCAB)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(5.0)))

    def forward(self, x):
        unit = lambda t: F.normalize(t, dim=-1)  # noqa: E731
        return {
            "image_features": unit(self.image(x["image"])),
            "text_features": unit(self.text(x["text"])),
            # fixed per-sample masks: the "perturbations" split over ranks like the samples
            "perturbed_image_features": unit(self.image(x["image"] * x["image_keep"])),
            "perturbed_text_features": unit(self.text(x["text"] * x["text_keep"])),
            "simclr_features_a": unit(self.image(x["view_a"])),
            "simclr_features_b": unit(self.image(x["view_b"])),
            "mlm_logits": self.vocab(x["tokens"]),
            "mlm_targets": x["targets"],
            "logit_scale": self.logit_scale.exp(),
        }


def _global_inputs():
    g = torch.Generator().manual_seed(1)
    n = WORLD * LOCAL_BATCH
    targets = torch.randint(VOCAB, (n, K), generator=g)
    targets[:LOCAL_BATCH, 1:] = -100  # rank 0 predicts 4 tokens, rank 1 twelve: a per-rank mean would differ
    return {
        "image": torch.randn(n, IN_DIM, generator=g), "text": torch.randn(n, IN_DIM, generator=g),
        "image_keep": (torch.rand(n, IN_DIM, generator=g) > 0.5).float() * 2,
        "text_keep": (torch.rand(n, IN_DIM, generator=g) > 0.5).float() * 2,
        "view_a": torch.randn(n, IN_DIM, generator=g), "view_b": torch.randn(n, IN_DIM, generator=g),
        "tokens": torch.randn(n, K, IN_DIM, generator=g), "targets": targets,
    }


def _grad_vector(model):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])


def _value_and_grad(model, loss, inputs):
    model.zero_grad()
    terms = loss(**model(inputs), output_dict=True)
    total = sum(terms.values())
    total.backward()
    return total.detach(), _grad_vector(model).clone()


def _check_gathering(rank, results):
    """gather_batch against an independent all_gather: values slot by slot, gradient per mode."""
    import torch.distributed as dist

    from openclip_unimlip.recipes.distributed import gather_batch

    g = torch.Generator().manual_seed(10 + rank)
    mine = [torch.randn(LOCAL_BATCH, 3, generator=g).requires_grad_(),
            torch.randn(LOCAL_BATCH, 2, generator=g).requires_grad_()]
    weights = [torch.randn(WORLD * LOCAL_BATCH, 3, generator=torch.Generator().manual_seed(20)),
               torch.randn(WORLD * LOCAL_BATCH, 2, generator=torch.Generator().manual_seed(21))]
    own = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    for with_grad, global_gradient in itertools.product((False, True), (False, True)):
        for t in mine:
            t.grad = None
        gathered = gather_batch(mine, rank, WORLD, with_grad, global_gradient=global_gradient)
        error = 0.0
        for got, local in zip(gathered, mine):
            slots = [torch.empty_like(local) for _ in range(WORLD)]
            dist.all_gather(slots, local.detach())
            error = max(error, (got.detach() - torch.cat(slots)).abs().max().item())
        # rank-dependent weights make the backward all_gather's sum over ranks visible
        sum(((r + 1) * w * x).sum() for r, w, x in zip([rank] * 2, weights, gathered)).backward()
        if with_grad:
            factor = sum(r + 1 for r in range(WORLD))
        else:
            factor = (rank + 1) * (WORLD if global_gradient else 1)
        grad_error = max((x.grad - factor * w[own]).abs().max().item() for x, w in zip(mine, weights))
        results[f"gather with_grad={with_grad} global_gradient={global_gradient}"] = (error, grad_error)
    results["gather of no tensors"] = gather_batch([], rank, WORLD, False, global_gradient=True)


def _rank_worker(rank, store_path, cases, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    # a rank that fails makes the other's next collective time out instead of hanging the suite
    dist.init_process_group("gloo", store=dist.FileStore(store_path, WORLD), rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    results = {}
    _check_gathering(rank, results)

    full = _global_inputs()
    local = {k: v[rank * LOCAL_BATCH:(rank + 1) * LOCAL_BATCH] for k, v in full.items()}
    model = _Towers()
    for name, flags in cases.items():
        if name == "refused":
            try:
                UniMlipLoss(rank=rank, world_size=WORLD, **flags)
                results["refused"] = "not refused"
            except ValueError as exc:
                results["refused"] = str(exc)
            continue
        for size in range(1, len(TERMS) + 1):
            for subset in itertools.combinations(TERMS, size):
                weights = {t: float(t in subset) for t in TERMS}
                ref_value, ref_grad = _value_and_grad(model, UniMlipLoss(weights=weights), full)
                loss = UniMlipLoss(weights=weights, rank=rank, world_size=WORLD, **flags)
                value, grad = _value_and_grad(model, loss, local)
                dist.all_reduce(grad)
                grad /= WORLD  # what DDP applies
                values = [torch.zeros(()) for _ in range(WORLD)]
                dist.all_gather(values, value)
                results[(name, subset)] = {
                    "ratio": (grad @ ref_grad / (ref_grad @ ref_grad)).item(),
                    "relative_error": ((grad - ref_grad).norm() / ref_grad.norm()).item(),
                    "values": [v.item() for v in values], "reference_value": ref_value.item(),
                }
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def _slurm_flags(monkeypatch):
    """--local-loss / --gather-with-grad as the SLURM launchers pass them, parsed by OpenCLIP."""
    from open_clip_train.params import parse_args

    from openclip_unimlip.seam import patches
    from openclip_unimlip.studies.pretraining import slurm

    monkeypatch.setattr(patches, "_training_run", None)  # parsing records options process-wide
    args = parse_args(slurm.recipe_args({"TRAIN_DATA": "/data/pmcoa/train/{00000..00164}.tar"}))
    return dict(local_loss=args.local_loss, gather_with_grad=args.gather_with_grad)


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    try:
        cases = {**FLAG_SETS, "slurm": _slurm_flags(monkeypatch), "refused": REFUSED}
    finally:
        monkeypatch.undo()
    out = tmp_path_factory.mktemp("ranks")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank_worker, args=(r, str(out / "store"), cases, str(out))) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0] * WORLD
    return cases, [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def test_gathered_batch_puts_each_rank_in_its_own_slot(two_rank_results):
    _, per_rank = two_rank_results
    for rank, results in enumerate(per_rank):
        assert results["gather of no tensors"] == []
        modes = [k for k in results if isinstance(k, str) and k.startswith("gather with")]
        assert len(modes) == 4
        for key in modes:
            value_error, grad_error = results[key]
            assert value_error == 0.0, (rank, key)
            assert grad_error < 1e-6, (rank, key)


@pytest.mark.parametrize("flags", [*FLAG_SETS, "slurm"])
@pytest.mark.parametrize("term", TERMS)
def test_each_term_has_the_one_gpu_gradient(two_rank_results, flags, term):
    _, per_rank = two_rank_results
    result = per_rank[0][(flags, (term,))]
    assert result["ratio"] == pytest.approx(1.0, abs=1e-4)
    assert result["relative_error"] < 1e-4


@pytest.mark.parametrize("flags", [*FLAG_SETS, "slurm"])
def test_every_subset_of_terms_runs_with_the_global_value_and_gradient(two_rank_results, flags):
    cases, per_rank = two_rank_results
    subsets = [s for k in range(1, len(TERMS) + 1) for s in itertools.combinations(TERMS, k)]
    for subset in subsets:
        result = per_rank[0][(flags, subset)]
        assert result["relative_error"] < 1e-4, subset
        values = result["values"]
        if cases[flags]["local_loss"]:
            # each rank reports its own rows' share: their mean is the global loss
            assert sum(values) / WORLD == pytest.approx(result["reference_value"], rel=1e-5), subset
        else:
            assert values == pytest.approx([result["reference_value"]] * WORLD, rel=1e-5), subset


def test_local_loss_without_gather_with_grad_is_refused(two_rank_results):
    _, per_rank = two_rank_results
    assert all("add --gather-with-grad" in results["refused"] for results in per_rank)
