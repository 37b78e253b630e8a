"""recipes/distributed.py in one process: the packing, slot order, gradient scaling, dtype round trip,
normalisers and refusals, with torch.distributed's collectives replaced by a stand-in that plays the
other ranks (their rows are known tensors). The real collectives in spawned ranks, against one
process at the global batch: tests/recipes/unimlip/test_distributed_losses.py and
tests/recipes/test_mlip_distributed.py. These pins fail in seconds where those take minutes."""
import argparse

import pytest
import torch
import torch.distributed as dist
import torch.distributed.nn

from openclip_unimlip.recipes import distributed
from openclip_unimlip.recipes.distributed import GatheringLoss, gather_batch

WORLD = 3
BATCH = 2


class OtherRanks:
    """all_gather / all_reduce as WORLD ranks would answer them: rank r's tensor is ``base + 100 * r``
    of this rank's, so every slot is recognisable; all_reduce adds what the other ranks hold."""

    def __init__(self, rank: int, other_counts=(5.0, 7.0)):
        self.rank = rank
        self.other_counts = other_counts
        self.calls = []

    def other(self, tensor: torch.Tensor, r: int) -> torch.Tensor:
        return tensor.detach() + 100.0 * (r - self.rank)

    def all_gather(self, parts, tensor):
        self.calls.append("all_gather")
        assert not tensor.requires_grad  # the no-gradient path hands the collective a detached copy
        for r, part in enumerate(parts):
            part.copy_(self.other(tensor, r))

    def all_gather_with_grad(self, tensor):
        self.calls.append("nn.all_gather")
        return tuple(tensor if r == self.rank else self.other(tensor, r) for r in range(WORLD))

    def all_reduce(self, tensor):
        self.calls.append("all_reduce")
        tensor += sum(self.other_counts)


@pytest.fixture
def ranks(monkeypatch):
    def install(rank: int, **kwargs) -> OtherRanks:
        fake = OtherRanks(rank, **kwargs)
        monkeypatch.setattr(dist, "all_gather", fake.all_gather)
        monkeypatch.setattr(dist, "all_reduce", fake.all_reduce)
        monkeypatch.setattr(torch.distributed.nn, "all_gather", fake.all_gather_with_grad)
        return fake
    return install


def _inputs():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(BATCH, 3, generator=g).requires_grad_(), torch.randn(BATCH, 2, generator=g).requires_grad_()]


def test_one_process_hands_back_its_tensors_without_a_collective(ranks):
    fake = ranks(0)
    tensors = _inputs()
    for with_grad in (False, True):
        out = gather_batch(tensors, rank=0, world_size=1, with_grad=with_grad, global_gradient=True)
        assert len(out) == 2 and all(o is t for o, t in zip(out, tensors))
    assert gather_batch([], rank=1, world_size=WORLD, with_grad=False) == []
    assert fake.calls == []


@pytest.mark.parametrize("rank", range(WORLD))
@pytest.mark.parametrize("with_grad", [False, True])
def test_each_rank_sits_in_its_own_slot_and_each_tensor_keeps_its_width(ranks, rank, with_grad):
    fake = ranks(rank)
    tensors = _inputs()
    out = gather_batch(tensors, rank=rank, world_size=WORLD, with_grad=with_grad)
    assert fake.calls == ["nn.all_gather" if with_grad else "all_gather"]  # one collective for both
    for got, local in zip(out, tensors):
        expected = torch.cat([local.detach() + 100.0 * (r - rank) for r in range(WORLD)])
        assert got.shape == (WORLD * BATCH, local.shape[1])
        torch.testing.assert_close(got.detach(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("with_grad, global_gradient, factor", [(False, False, 1.0), (False, True, float(WORLD)),
                                                                (True, False, 1.0), (True, True, 1.0)])
def test_only_the_own_rows_carry_a_gradient_scaled_by_the_world_size_for_the_global_loss(
        ranks, with_grad, global_gradient, factor):
    rank = 1
    ranks(rank)
    tensors = _inputs()
    asked = {"global_gradient": True} if global_gradient else {}  # without it: the default, none
    out = gather_batch(tensors, rank=rank, world_size=WORLD, with_grad=with_grad, **asked)
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(o.shape, generator=g) for o in out]
    sum((w * o).sum() for w, o in zip(weights, out)).backward()
    own = slice(rank * BATCH, (rank + 1) * BATCH)
    for t, w in zip(tensors, weights):
        torch.testing.assert_close(t.grad, factor * w[own])


def test_the_gradient_scaling_is_the_identity_forward_and_a_product_backward():
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), requires_grad=True)
    y = distributed._ScaleGradient.apply(x, 2.5)
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    upstream = torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
    (grad,) = torch.autograd.grad(y, x, upstream)
    (reference,) = torch.autograd.grad(x * 2.5, x, upstream)
    torch.testing.assert_close(grad, reference)


def test_all_reduce_sum_returns_the_sum_and_leaves_its_input_alone(ranks):
    fake = ranks(0, other_counts=(5.0, 7.0))
    one = torch.tensor(3.0, requires_grad=True)
    assert distributed.all_reduce_sum(one, world_size=1) is one and fake.calls == []
    total = distributed.all_reduce_sum(one, world_size=WORLD)
    assert total.item() == 15.0 and not total.requires_grad
    assert one.item() == 3.0 and fake.calls == ["all_reduce"]


class _Loss(GatheringLoss):
    recipe = "the test recipe"


def _loss(**overrides) -> GatheringLoss:
    settings = dict(weights={"a": 1, "b": 0.0, "c": 0.5}, local_loss=False, gather_with_grad=False, rank=0,
                    world_size=1)
    settings.update(overrides)
    return _Loss(**settings)


def test_weights_keep_the_positive_terms_as_floats_and_the_settings_as_given():
    loss = _loss(weights={"a": 1, "b": 0.0, "c": 0.5, "d": 1e-9}, local_loss=True, gather_with_grad=True, rank=2,
                 world_size=WORLD)
    assert loss.weights == {"a": 1.0, "c": 0.5, "d": 1e-9} and type(loss.weights["a"]) is float
    assert (loss.local_loss, loss.gather_with_grad, loss.rank, loss.world_size) == (True, True, 2, WORLD)


@pytest.mark.parametrize("world_size, local_loss, gather_with_grad, refused", [
    (2, True, False, True), (WORLD, True, False, True), (1, True, False, False), (2, True, True, False),
    (2, False, False, False), (2, False, True, False)])
def test_local_loss_alone_is_refused_on_several_ranks_only(world_size, local_loss, gather_with_grad, refused):
    def build():
        return _loss(local_loss=local_loss, gather_with_grad=gather_with_grad, world_size=world_size)
    if refused:
        with pytest.raises(ValueError) as error:
            build()
        assert str(error.value) == distributed.local_loss_needs_gather_with_grad("the test recipe")
        assert "with the test recipe:" in str(error.value) and "add --gather-with-grad" in str(error.value)
    else:
        build()


@pytest.mark.parametrize("local_loss, factor", [(False, float(WORLD)), (True, 1.0)])
def test_gather_round_trips_shapes_and_dtypes_in_one_collective(ranks, local_loss, factor):
    fake = ranks(rank=2)
    loss = _loss(local_loss=local_loss, gather_with_grad=local_loss, rank=2, world_size=WORLD)
    g = torch.Generator().manual_seed(4)
    images = torch.randn(BATCH, 2, 3, generator=g).to(torch.bfloat16).requires_grad_()
    ids = torch.randint(0, 1000, (BATCH, 4), generator=g)
    features = torch.randn(BATCH, 5, generator=g, dtype=torch.float64).requires_grad_()
    out = loss._gather([images, ids, features])
    assert fake.calls == ["nn.all_gather" if local_loss else "all_gather"]
    for got, local in zip(out, (images, ids, features)):
        assert got.dtype == local.dtype and got.shape == (WORLD * BATCH, *local.shape[1:])
        own = got[2 * BATCH:]
        torch.testing.assert_close(own.detach(), local.detach(), rtol=0, atol=0)  # exact after the round trip
        torch.testing.assert_close(got[:BATCH].detach(), (local.detach().double() - 200.0).to(local.dtype))  # rank 0
    (out[0].float().sum() + out[2].sum()).backward()
    torch.testing.assert_close(images.grad, torch.full_like(images, factor))
    torch.testing.assert_close(features.grad, torch.full_like(features, factor))
    assert loss._gather([]) == [] and fake.calls == ["nn.all_gather" if local_loss else "all_gather"]


def test_rows_are_the_own_with_local_loss_and_the_gathered_otherwise():
    gathered, local = torch.zeros(6, 2), torch.ones(2, 2)
    assert _loss(local_loss=True)._rows(gathered, local) is local
    assert _loss(local_loss=False)._rows(gathered, local) is gathered


def test_per_sample_mean_is_the_share_of_the_global_mean(ranks):
    values = torch.tensor([1.0, 2.0, 6.0], requires_grad=True)
    assert _loss()._per_sample_mean(values).item() == pytest.approx(3.0)  # one process: the mean
    assert _loss()._per_sample_mean(torch.tensor([2.5])).item() == 2.5  # of one sample: itself
    ranks(0, other_counts=(5.0, 4.0))  # 3 + 5 + 4 = 12 samples over the ranks
    mean = _loss(rank=0, world_size=WORLD)._per_sample_mean(values)
    assert mean.item() == pytest.approx(9.0 * WORLD / 12.0)
    mean.backward()
    torch.testing.assert_close(values.grad, torch.full((3,), WORLD / 12.0))
    ranks(0, other_counts=(0.0, 0.0))
    empty = torch.zeros(0)
    assert _loss(rank=0, world_size=WORLD)._per_sample_mean(empty).item() == 0.0  # no sample anywhere: 0, not NaN


def test_terms_or_total_is_openclips_loss_contract():
    terms = {"a_loss": torch.tensor(1.5), "b_loss": torch.tensor(2.0)}
    assert distributed.terms_or_total(terms, output_dict=True) is terms
    assert distributed.terms_or_total(terms, output_dict=False).item() == 3.5


def test_distributed_flags_read_openclips_args_with_one_process_defaults():
    args = argparse.Namespace(local_loss=True, gather_with_grad=True, rank=3, world_size=8)
    assert distributed.distributed_flags(args) == dict(local_loss=True, gather_with_grad=True, rank=3,
                                                       world_size=8)
    assert distributed.distributed_flags(argparse.Namespace()) == dict(local_loss=False, gather_with_grad=False,
                                                                       rank=0, world_size=1)
