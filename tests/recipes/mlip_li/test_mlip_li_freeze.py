"""MLIP (Li)'s first-epoch prototype freeze as MGCA's: its ``on_after_backward`` sets the
prototypes' gradient to None while ``current_epoch < freeze_prototypes_epochs``
(HKU-MedAI/MGCA, mgca/models/mgca/mgca_module.py l.340-343, commit 680fe4a), so ``torch.optim.AdamW``
(l.391) skips them: no step count, no moments, no weight decay. Run through ``open_clip_train``'s
own ``train_one_epoch`` (the plugin's epoch hook included) and judged on the optimizer's state and
against a reference AdamW on a copy of the prototypes."""
import argparse
import copy

import pytest
import torch

from openclip_unimlip.recipes.mlip_li.knowledge import DEFAULT_KNOWLEDGE_FILE
from openclip_unimlip.recipes.mlip_li.loss import MlipLiLoss

from train_data import InMemoryData

LR, WEIGHT_DECAY = 0.01, 0.2


@pytest.fixture(scope="module")
def batch():
    import open_clip

    texts = open_clip.get_tokenizer("mlip-li-tiny")(["heart size is normal. small left pleural effusion.",
                                                     "a bright square in the upper left of the image",
                                                     "lungs are clear. no focal consolidation.",
                                                     "dark square. lower right."])
    return torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(0)), texts


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import open_clip

    knowledge = tmp_path_factory.mktemp("knowledge") / "entities.jsonl"  # 16 entities: all 500 cost seconds
    knowledge.write_text("".join(DEFAULT_KNOWLEDGE_FILE.read_text().splitlines(keepends=True)[:16]))
    torch.manual_seed(0)
    model = open_clip.create_model("mlip-li-tiny", output_dict=True, mlip_li_cfg={"knowledge_file": str(knowledge)})
    model.configure_terms(["prototype"])
    # the towers' trunks frozen (a cheap backward): the prototypes and the two projections train
    model.requires_grad_(False)
    for part in (model.prototypes, model.visual.proj, model.text.proj):
        part.requires_grad_(True)
    return model


@pytest.fixture
def model(built):
    return copy.deepcopy(built)


def _epoch(model, batches, epoch, optimizer):
    from open_clip_train.train import train_one_epoch

    args = argparse.Namespace(device="cpu", precision="fp32", accum_freq=1, distill=False, skip_scheduler=True,
                              grad_clip_norm=1.0, horovod=False, log_every_n_steps=1, batch_size=len(batches[0][0]),
                              world_size=1, rank=0, local_rank=0, wandb=False)
    loss = MlipLiLoss(weights={"global": 0, "divergence": 0, "local": 0, "prototype": 1.0})
    train_one_epoch(model, {"train": InMemoryData(batches)}, loss, epoch, optimizer, None, None, None, args)


def test_frozen_prototypes_are_skipped_by_adamw_and_then_start_fresh(model, batch):
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LR, weight_decay=WEIGHT_DECAY)
    seen = []  # (epoch, gradient handed to the step hooks before the plugin's, prototypes before the step)
    epoch_now = [0]

    def before_step(opt, args, kwargs):  # registered first: runs before the plugin's hook
        grad = model.prototypes.grad
        seen.append((epoch_now[0], None if grad is None else grad.clone(), model.prototypes.detach().clone()))

    at_step = []  # the prototypes' gradient when AdamW steps (after every step pre-hook)
    optimizer.register_step_pre_hook(before_step)
    optimizer.register_step_post_hook(lambda opt, args, kwargs: at_step.append(model.prototypes.grad))

    with torch.no_grad():
        model.train()(*batch)  # the first forward initialises the prototypes from the knowledge entities
    start = model.prototypes.detach().clone()
    _epoch(model, [batch, batch, batch], 0, optimizer)

    # the frozen epoch: a zero gradient reached the step (DDP needs one), AdamW saw none and kept no state
    assert [e for e, _, _ in seen] == [0, 0, 0]
    assert all(grad is not None and not grad.any() for _, grad, _ in seen)
    assert at_step == [None, None, None]
    assert model.prototypes not in optimizer.state or not optimizer.state[model.prototypes]
    assert torch.equal(model.prototypes.detach(), start)  # not even weight decay
    towers = [p for p in trainable if p is not model.prototypes]
    assert towers and all(int(optimizer.state[p]["step"]) == 3 for p in towers)  # the projections did train

    epoch_now[0] = 1
    _epoch(model, [batch], 1, optimizer)
    _, grad, before = seen[-1]
    assert grad is not None and grad.abs().max() > 0
    assert int(optimizer.state[model.prototypes]["step"]) == 1
    # the reference: a fresh AdamW of the same settings on a copy, given the same gradient
    copy = before.clone().requires_grad_(True)
    copy.grad = grad.clone()
    group = optimizer.param_groups[0]
    torch.optim.AdamW([copy], lr=group["lr"], betas=group["betas"], eps=group["eps"],
                      weight_decay=group["weight_decay"]).step()
    torch.testing.assert_close(model.prototypes.detach(), copy.detach(), rtol=0, atol=1e-7)
    # a fresh AdamW's first step moves every entry by about the learning rate (|m̂/√v̂| = 1)
    step = (model.prototypes.detach() - before * (1 - LR * WEIGHT_DECAY)).abs()
    moved = step[grad.abs() > 1e-6]
    assert moved.numel() > 0 and torch.allclose(moved, torch.full_like(moved, LR), rtol=0.02)


def test_without_the_trainer_hook_a_loop_must_drop_the_gradients_itself(model, batch):
    """``drop_frozen_gradients`` is a no-op once the freeze is over: the gradient reaches AdamW."""
    model.train()
    loss = MlipLiLoss(weights={"global": 0, "divergence": 0, "local": 0, "prototype": 1.0})
    for epoch, expect_none in ((0, True), (1, False)):
        model.set_epoch(epoch)
        model.zero_grad()
        loss(**model(*batch)).backward()
        model.drop_frozen_gradients()
        assert (model.prototypes.grad is None) == expect_none
