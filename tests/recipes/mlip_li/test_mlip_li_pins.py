"""Pins of MLIP (Li) beyond its formulas (issue 26): every term's weight and the divergence temperature
as configured, what the model hands its loss (the diverged views, the [CLS] token weights) and the
default knowledge. Each is held against an independent computation: a contrast written out
(``mlip_helpers``), OpenCLIP's own towers, the eager attention weights of transformers, a count of the
knowledge file's lines."""
import inspect
import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from openclip_unimlip.recipes import distributed, ops
from openclip_unimlip.recipes.mlip_li import knowledge as li_knowledge
from openclip_unimlip.recipes.mlip_li import loss as li_loss_module
from openclip_unimlip.recipes.mlip_li import model as li_model_module
from openclip_unimlip.recipes.mlip_li.config import LiCfg
from openclip_unimlip.recipes.mlip_li.loss import MlipLiLoss

from mlip_helpers import RecordedMasks as _RecordedMasks
from mlip_helpers import defaults_unlike_clip_loss as _defaults_unlike_clip_loss
from mlip_helpers import joined as _joined
from mlip_helpers import li_inputs as _li_inputs
from mlip_helpers import mean_of_both_directions as _mean_of_both_directions
from mlip_helpers import two_ranks_in_one_process as _two_ranks_in_one_process


# ----- the loss -----------------------------------------------------------------------------------
def test_divergence_contrasts_at_its_own_temperature_not_at_the_logit_scale():
    x = _li_inputs()
    assert x["logit_scale"].item() != 1 / 0.05  # a logit scale other than 1/τd
    loss = MlipLiLoss(weights={"global": 0, "local": 0, "prototype": 0}, divergence_temperature=0.05)
    value = loss(**x, output_dict=True)["divergence_loss"]
    expected = (_mean_of_both_directions(x["image_features"], x["divergence_image_features"], 1 / 0.05)
                + _mean_of_both_directions(x["text_features"], x["divergence_text_features"], 1 / 0.05))
    torch.testing.assert_close(value, expected)


# ----- the model's outputs ------------------------------------------------------------------------
def test_li_diverged_views_are_second_passes_of_each_tower(li_model, images, tokens, monkeypatch):
    recorded = _RecordedMasks()
    monkeypatch.setattr(li_model_module, "random_patch_mask", recorded)
    li_model.train()
    with torch.no_grad():
        torch.manual_seed(0)
        out = li_model(images, tokens)
        # the image view: the tower on divergence_image_keep = 1/4 of the 36 patches
        (call,) = recorded.calls
        assert call["mask_ratio"] == 0.75 and call["keep"].shape[1] == 9
        torch.testing.assert_close(out["divergence_image_features"],
                                   F.normalize(ops.vit_tokens(li_model.visual, images, call["keep"])[0], dim=-1))
        # the text view: another dropout draw of the tower (MiniLM: dropout 0.1), so not the first pass ...
        assert (out["divergence_text_features"] - out["text_features"]).abs().max() > 1e-3
        # ... yet the same function: without dropout both passes are OpenCLIP's text tower forward
        li_model.text.eval()
        try:
            quiet = li_model(images, tokens)
            reference = F.normalize(li_model.text(tokens), dim=-1)
        finally:
            li_model.train()
    torch.testing.assert_close(quiet["text_features"], reference)
    torch.testing.assert_close(quiet["divergence_text_features"], reference)


def test_li_token_weights_are_the_last_layers_clipped_cls_attention(li_model, tokens, images):
    """MGCA (mgca_module.py l.140-153; encoder.py l.382): the last layer's [CLS]->token attention
    averaged over heads, clipped to the sample's 10th-90th percentile and normalised; here read from
    transformers' own eager attention probabilities."""
    transformer = li_model.text.transformer
    mask = (tokens != li_model.text.config.pad_token_id).long()
    li_model.text.eval()  # no dropout, so both passes see the same states
    try:
        transformer.set_attn_implementation("eager")
        with torch.no_grad():
            probabilities = transformer(input_ids=tokens, attention_mask=mask, output_attentions=True).attentions[-1]
        transformer.set_attn_implementation("sdpa")
        with torch.no_grad():
            out = li_model(images, tokens)
    finally:
        transformer.set_attn_implementation("sdpa")
        li_model.train()
    cls_to_token = probabilities[:, :, 0, :].mean(dim=1)
    special = torch.as_tensor(li_model.special_token_ids)
    for row, weights, ids, row_mask in zip(cls_to_token, out["token_weights"], tokens, mask):
        valid = row_mask.bool() & ~torch.isin(ids, special)
        values = row[valid]
        clipped = values.clamp(torch.quantile(values, 0.1), torch.quantile(values, 0.9))
        torch.testing.assert_close(weights[valid], clipped / clipped.sum(), atol=1e-5, rtol=1e-4)
        assert (weights[~valid] == 0).all()


def test_the_default_knowledge_is_the_500_entity_radiology_file():
    """docs/methods/mlip-li.md: knowledge_file null = "radiology", 500 entities (K = 500, MGCA's
    num_prototypes, mgca_module.py l.46); counted here from the file's lines."""
    path = Path(li_knowledge.__file__).parent / "knowledge" / "radiology_entities.jsonl"
    names = [json.loads(line)["name"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(names) == 500
    assert LiCfg().knowledge_file is None
    assert [e.name for e in li_knowledge.load_knowledge(LiCfg().knowledge_file)] == names
    model = open_clip.create_model("mlip-li-tiny", device="meta", pretrained_text=False)  # no weights
    assert model.entity_names == names and tuple(model.prototypes.shape) == (500, 128)


@pytest.mark.parametrize("local_loss", [True, False])
def test_two_ranks_average_to_the_one_process_terms(monkeypatch, local_loss):
    """Two ranks in one process (``mlip_helpers.two_ranks_in_one_process``): the two ranks' terms
    average to the one-process terms at the double batch, the prototypes' codes computed over both
    ranks' scores; with --local-loss --gather-with-grad each rank scores its own rows. With real
    collectives in spawned ranks: tests/recipes/test_mlip_distributed.py."""
    # each rank's batch (8) as wide as the features (8): a batch axis confused with the feature axis shows
    halves = [_joined(_li_inputs(seed=1), _li_inputs(seed=2)), _joined(_li_inputs(seed=3), _li_inputs(seed=4))]
    assert halves[0]["image_features"].shape == (8, 8)
    one_process = MlipLiLoss()(**_joined(*halves), output_dict=True)
    ranks = _two_ranks_in_one_process(monkeypatch, lambda rank: MlipLiLoss(
        local_loss=local_loss, gather_with_grad=True, rank=rank, world_size=2), halves,
        [distributed, li_loss_module])
    assert set(one_process) == set(ranks[0]) == set(ranks[1]) == {
        "global_loss", "divergence_loss", "local_loss", "prototype_loss"}
    for term, value in one_process.items():
        torch.testing.assert_close((ranks[0][term] + ranks[1][term]) / 2, value, msg=term)
        if local_loss:  # each rank scores its own rows
            assert not torch.allclose(ranks[0][term], ranks[1][term])


def test_the_loss_defaults_are_the_configs_and_clip_losss():
    """A loss built without arguments (a user's script) is the configured one, distributed as ClipLoss."""
    ours = inspect.signature(MlipLiLoss.__init__).parameters
    for name in ("divergence_temperature", "local_temperature", "prototype_temperature", "sinkhorn_epsilon",
                 "sinkhorn_iterations", "sinkhorn_tolerance"):
        assert ours[name].default == getattr(LiCfg(), name), name
    assert _defaults_unlike_clip_loss(MlipLiLoss) == []


def test_a_caption_with_no_weighted_token_is_left_out_of_the_local_term():
    """An empty caption (every token weightless: specials and padding) has nothing to align; the local
    term is the mean over the other samples, as if it were not in the batch, and finite."""
    inputs = _li_inputs(seed=5)
    tokens, weights, patches = inputs["token_embeddings"], inputs["token_weights"].clone(), inputs["patch_embeddings"]
    weights[1] = 0
    loss = MlipLiLoss()
    with_empty = loss.local_alignment(tokens, weights, patches)
    kept = [0, 2, 3]
    torch.testing.assert_close(with_empty, loss.local_alignment(tokens[kept], weights[kept], patches[kept]))
    assert torch.isfinite(with_empty)


# ----- what the model builds ----------------------------------------------------------------------
def _without_dropout(monkeypatch, kinds=("hidden_dropout_prob", "attention_probs_dropout_prob")):
    """OpenCLIP reads the text tower's config with AutoConfig; this one comes back without those dropouts."""
    from open_clip import hf_model

    read = hf_model.AutoConfig.from_pretrained

    class NoDropoutConfig:
        @staticmethod
        def from_pretrained(name, **kwargs):
            config = read(name, **kwargs)
            for kind in kinds:
                setattr(config, kind, 0.0)
            return config

    monkeypatch.setattr(hf_model, "AutoConfig", NoDropoutConfig)


def test_a_text_tower_without_dropout_is_refused_only_with_the_divergence_term(small_knowledge, monkeypatch):
    _without_dropout(monkeypatch)
    with pytest.raises(ValueError, match="the text tower has no dropout"):
        open_clip.create_model("mlip-li-tiny", mlip_li_cfg={"knowledge_file": small_knowledge})
    model = open_clip.create_model("mlip-li-tiny", mlip_li_cfg={"knowledge_file": small_knowledge,
                                                                "loss_weights": {"divergence": 0.0}})
    assert model.text.config.hidden_dropout_prob == 0.0 and "divergence" not in model.active_terms


def test_a_text_tower_without_a_bert_attention_layer_is_refused_with_one_message(small_knowledge, monkeypatch):
    """A tower whose last layer has no BERT self-attention (``encoder.layer[-1].attention.self``)."""
    def missing(self):
        raise AttributeError("'Encoder' object has no attribute 'layer'")

    monkeypatch.setattr(li_model_module.MlipLi, "_last_text_attention", missing)
    with pytest.raises(ValueError, match=r"reads the \[CLS\] attention of a BERT-family text tower"):
        open_clip.create_model("mlip-li-tiny", mlip_li_cfg={"knowledge_file": small_knowledge})


@pytest.mark.parametrize("kind", ["hidden_dropout_prob", "attention_probs_dropout_prob"])
def test_a_text_tower_with_either_dropout_diverges_its_text_view(small_knowledge, monkeypatch, kind):
    """One kind of dropout is enough for two text passes to differ: only a tower with neither is refused."""
    _without_dropout(monkeypatch, kinds=(kind,))
    model = open_clip.create_model("mlip-li-tiny", mlip_li_cfg={"knowledge_file": small_knowledge})
    assert getattr(model.text.config, kind) == 0.0 and "divergence" in model.active_terms


@pytest.mark.parametrize("freeze_epochs", [0, 1, 2])
def test_the_prototypes_are_frozen_in_exactly_the_first_epochs(li_model, freeze_epochs):
    """MGCA's rule (mgca_module.py l.340-343): frozen while ``current_epoch < freeze_prototypes_epochs``,
    and never again after."""
    from dataclasses import replace

    configured = li_model.cfg
    li_model.cfg = replace(configured, freeze_prototypes_epochs=freeze_epochs)
    try:
        frozen = []
        for epoch in range(6):
            li_model.set_epoch(epoch)
            frozen.append(li_model.prototypes_frozen)
    finally:
        li_model.cfg = configured
    assert frozen == [True] * freeze_epochs + [False] * (6 - freeze_epochs)


def test_the_state_dict_is_openclips_plus_the_prototypes(li_model):
    """A checkpoint holds OpenCLIP's CustomTextCLIP of the same towers, the prototypes and whether
    they were initialised; the knowledge's token ids are rebuilt from the knowledge file, not saved."""
    from openclip_unimlip.seam.hub import resolve_text_cfg

    config = open_clip.get_model_config("mlip-li-tiny")  # its text tower read from the installed MiniLM
    clip = open_clip.model.CustomTextCLIP(config["embed_dim"], config["vision_cfg"],
                                          resolve_text_cfg(config["text_cfg"]))
    assert set(li_model.state_dict()) == set(clip.state_dict()) | {"prototypes", "prototypes_initialized"}


def test_frozen_prototypes_score_as_themselves_with_a_zero_gradient(small_knowledge, images, tokens):
    torch.manual_seed(0)
    model = open_clip.create_model("mlip-li-tiny", output_dict=True,
                                   mlip_li_cfg={"knowledge_file": small_knowledge}).train()
    model.set_epoch(0)  # MGCA's first epoch: frozen
    with torch.no_grad():
        model(images, tokens)  # the first forward initialises the prototypes from the knowledge
        model.prototypes[0, 0] = 0.0  # an element of exactly 0 still scores (and passes its gradient) as itself
    out = model(images, tokens)
    expected = out["image_features"] @ F.normalize(model.prototypes, dim=-1).T
    torch.testing.assert_close(out["image_prototype_scores"], expected)
    out["image_prototype_scores"].sum().backward()
    assert torch.equal(model.prototypes.grad, torch.zeros_like(model.prototypes))


def test_every_rank_takes_rank_0s_prototypes(li_model, monkeypatch):
    """Under torch.distributed the knowledge embeddings are broadcast from rank 0 (here answered in
    one process: the call is recorded and rank 0's tensor stands for what arrives)."""
    sent = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "broadcast", lambda tensor, src: sent.append((tensor, src)))
    li_model.initialize_prototypes()
    ((tensor, src),) = sent
    assert src == 0 and tensor.data_ptr() == li_model.prototypes.data_ptr()


def test_li_token_and_patch_embeddings_are_unit_vectors_along_their_last_dim(li_model, images, tokens):
    with torch.no_grad():
        out = li_model.train()(images, tokens)
    for name in ("token_embeddings", "patch_embeddings", "image_features", "text_features"):
        torch.testing.assert_close(out[name].norm(dim=-1), torch.ones(out[name].shape[:-1]), msg=name)



def _hyper_parameter_table():
    """docs/methods/mlip-li.md's "Hyper-parameters" table: key -> its default cell."""
    doc = (Path(__file__).resolve().parents[3] / "docs" / "methods" / "mlip-li.md").read_text()
    section = doc.split("## Hyper-parameters (`mlip_li_cfg`)")[1].split("\n## ")[0]
    rows = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| `")]
    return {key.strip(): default.strip() for key, default in rows}


def test_every_default_of_the_section_is_the_docs_tables():
    table = _hyper_parameter_table()
    cfg = LiCfg()
    assert table["`knowledge_file`"].startswith("`null`") and cfg.knowledge_file is None
    for key in ("divergence_temperature", "divergence_image_keep", "local_temperature", "prototype_temperature",
                "freeze_prototypes_epochs"):
        assert getattr(cfg, key) == float(table[f"`{key}`"]), key
    assert cfg.attention_percentiles == tuple(json.loads(table["`attention_percentiles`"]))
    epsilon, iterations = (float(v) for v in table["`sinkhorn_epsilon` / `sinkhorn_iterations`"].split(" / "))
    assert (cfg.sinkhorn_epsilon, cfg.sinkhorn_iterations) == (epsilon, iterations)
    assert cfg.sinkhorn_tolerance == float(table["`sinkhorn_tolerance`"].split()[0])
    weights = dict(part.split() for part in table["`loss_weights`"].split(", "))
    assert cfg.loss_weights == {term: float(value) for term, value in weights.items()}
    # a partial set keeps the table's weight for every term it leaves out
    assert LiCfg(loss_weights={"local": 0.0}).loss_weights == {**cfg.loss_weights, "local": 0.0}


# (field, value, accepted): each range's ends (0 <= low <= high <= 1; keep in (0, 1]; temperatures,
# epsilon and iterations > 0; tolerance and frozen epochs >= 0), just inside and just outside
BOUNDS = [("attention_percentiles", (0, 0), True), ("attention_percentiles", (1, 1), True),
          ("attention_percentiles", (0.4, 0.4), True), ("attention_percentiles", (0, 1), True),
          ("attention_percentiles", (-1e-9, 0.5), False), ("attention_percentiles", (0.5, 1 + 1e-9), False),
          ("attention_percentiles", (0.6, 0.5), False),
          ("divergence_image_keep", 1.0, True), ("divergence_image_keep", 1e-9, True),
          ("divergence_image_keep", 0.0, False), ("divergence_image_keep", 1 + 1e-9, False),
          ("divergence_image_keep", -0.5, False), ("attention_percentiles", (-0.5, -0.25), False),
          *((key, 1e-9, True) for key in ("divergence_temperature", "local_temperature", "prototype_temperature",
                                          "sinkhorn_epsilon")),
          *((key, 0.0, False) for key in ("divergence_temperature", "local_temperature", "prototype_temperature",
                                          "sinkhorn_epsilon")),
          ("sinkhorn_iterations", 1, True), ("sinkhorn_iterations", 0, False),
          ("sinkhorn_tolerance", 0.0, True), ("sinkhorn_tolerance", -1e-9, False),
          ("freeze_prototypes_epochs", 0, True), ("freeze_prototypes_epochs", -1, False)]


@pytest.mark.parametrize("key, value, accepted", BOUNDS)
def test_each_value_is_accepted_exactly_within_its_range(key, value, accepted):
    if accepted:
        cfg = LiCfg.from_dict({key: value})
        if key == "attention_percentiles":  # stored as a pair of floats, whatever JSON held
            assert cfg.attention_percentiles == tuple(map(float, value))
            assert all(type(v) is float for v in cfg.attention_percentiles)
        else:
            assert getattr(cfg, key) == value
    else:
        with pytest.raises(ValueError, match=key):
            LiCfg.from_dict({key: value})
