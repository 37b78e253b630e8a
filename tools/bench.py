"""What a Uni-Mlip training step costs over plain CLIP on the same towers and batch.

Each variant runs a full step (forward, loss, backward, AdamW) of one model:

- ``clip``: OpenCLIP's ``CustomTextCLIP.forward`` (BatchNorm in train mode) with OpenCLIP's
  ``ClipLoss``: the baseline every ratio refers to;
- ``unimlip``: all five terms with BatchNorm statistics frozen, the paper's main recipe; its
  step includes drawing the two strong views on the device;
- ``+<term>``: ITC plus that one term (BatchNorm frozen only for ``+simclr``, which is the
  only one fed the strong views).

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over forward and backward
(matmuls, convolutions, attention; element-wise work and the optimizer are not counted), so
``efficiency = FLOP ratio / time ratio`` is 1 when a variant's extra time is exactly the extra
counted compute, and falls below 1 by the share of glue (masking, gathers, copies, syncs).
Variants are timed round-robin, one step each per round, so load from other processes on a
shared machine spreads over all of them instead of biasing one.
"""
import json
import os
import re
import statistics
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from openclip_unimlip.recipes.unimlip.config import TERMS
from openclip_unimlip.recipes.unimlip.loss import PAPER_WEIGHTS, UniMlipLoss
from openclip_unimlip.recipes.unimlip.model import UniMlip

EXTRA_TERMS = tuple(t for t in TERMS if t != "itc")
VARIANTS: Tuple[str, ...] = ("clip", "unimlip", *(f"+{t}" for t in EXTRA_TERMS))

# Captions of varied length, so that the masker sees real words, sub-words and padding.
_CAPTIONS = (
    "CT of the head showing a small round hyperdense lesion in the left upper region",
    "chest radiograph with a large oval hypodense opacity in the right lower zone",
    "MR slice of the brain without focal findings",
    "ultrasound image showing an irregular bright nodule near the centre of the thyroid gland",
    "fundus photograph with scattered microaneurysms and hard exudates",
    "axial non-contrast CT demonstrating bilateral pleural effusions",
)

# RN50 size: BiomedBERT is not available offline; a randomly initialised BERT-base of the same
# shape (BertConfig defaults: 12 layers, width 768, vocabulary 30522) stands in for it.
_BERT_BASE_CONFIG = {
    "architectures": ["BertModel"], "model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12,
    "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu", "vocab_size": 30522,
    "max_position_embeddings": 512, "type_vocab_size": 2, "pad_token_id": 0, "layer_norm_eps": 1e-12,
    "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
}
SIZES = {"tiny": "unimlip-tiny", "rn50": "unimlip-rn50"}


@dataclass
class StepMeasurement:
    variant: str
    seconds: List[float]  # one per timed round: forward, backward and optimizer step
    model_seconds: List[float]  # the same steps up to the end of backward
    flops: int
    peak_memory_mib: float

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max - min) / median over the rounds: how noisy the median is."""
        return (max(self.seconds) - min(self.seconds)) / self.median_seconds


@dataclass
class StepReport:
    model: str
    text_tower: str
    device: str
    precision: str
    batch_size: int
    image_size: int
    memory_kind: str
    measurements: List[StepMeasurement] = field(default_factory=list)

    def rows(self) -> List[Dict]:
        """One dict per variant with the ratios to ``clip``."""
        base = next(m for m in self.measurements if m.variant == "clip")
        rows = []
        for m in self.measurements:
            time_ratio = m.median_seconds / base.median_seconds
            flop_ratio = m.flops / base.flops
            rows.append({
                "variant": m.variant,
                "step_ms": 1000 * m.median_seconds,
                "spread": m.spread,
                "gflops": m.flops / 1e9,
                "time_ratio": time_ratio,
                "flop_ratio": flop_ratio,
                "efficiency": flop_ratio / time_ratio,
                # the same without the optimizer, whose cost grows with the parameters a term adds
                "model_efficiency": flop_ratio / (statistics.median(m.model_seconds)
                                                  / statistics.median(base.model_seconds)),
                "peak_memory_mib": m.peak_memory_mib,
            })
        return rows

    def to_dict(self) -> Dict:
        info = {k: v for k, v in asdict(self).items() if k != "measurements"}
        return {**info, "rows": self.rows(), "seconds": {m.variant: m.seconds for m in self.measurements},
                "model_seconds": {m.variant: m.model_seconds for m in self.measurements}}

    def format_table(self) -> str:
        lines = [
            f"{self.model} ({self.text_tower}), {self.device} {self.precision}, batch {self.batch_size} "
            f"at {self.image_size}px; peak memory = {self.memory_kind}",
            f"{'variant':<22}{'step ms':>9}{'spread':>8}{'GFLOP':>9}{'time x':>8}{'FLOP x':>8}{'effic.':>8}"
            f"{'fw+bw ef.':>10}{'mem MiB':>9}",
        ]
        for r in self.rows():
            lines.append(
                f"{r['variant']:<22}{r['step_ms']:>9.1f}{r['spread']:>8.0%}{r['gflops']:>9.2f}{r['time_ratio']:>8.2f}"
                f"{r['flop_ratio']:>8.2f}{r['efficiency']:>8.2f}{r['model_efficiency']:>10.2f}{r['peak_memory_mib']:>9.0f}")
        return "\n".join(lines)


def _bert_base_stand_in() -> str:
    directory = Path(tempfile.gettempdir()) / "openclip_unimlip_bench" / "bert-base-random"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(_BERT_BASE_CONFIG), encoding="utf-8")
    return str(directory)


def build_model(size: str, device: str = "cpu") -> Tuple[UniMlip, Callable, str]:
    """The model of ``size`` ("tiny" or "rn50"), randomly initialised apart from the tiny text
    tower. Returns the model, its tokenizer and a description of the text tower."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    from openclip_unimlip.recipes.text_models import resolve_text_model

    name = SIZES[size]
    text_cfg = dict(open_clip.get_model_config(name)["text_cfg"])
    overrides, text_tower = {}, text_cfg["hf_model_name"]
    if size == "rn50" and resolve_text_model(text_cfg["hf_model_name"]) == text_cfg["hf_model_name"]:
        # same vocabulary (bert-base-uncased WordPiece, 30522) as the BERT-base shape stands in for
        minilm = resolve_text_model("sentence-transformers/all-MiniLM-L6-v2")
        text_cfg.update(hf_model_name=_bert_base_stand_in(), hf_tokenizer_name=minilm, hf_model_pretrained=False)
        overrides = {"text_cfg": text_cfg}
        text_tower = "random BERT-base stand-in for BiomedBERT, MiniLM tokenizer"
    model = open_clip.create_model(name, device=device, output_dict=True, **overrides)
    # configs name tokenizers by hub id; the local copy is resolved as the factory resolves it
    tokenizer = HFTokenizer(resolve_text_model(text_cfg["hf_tokenizer_name"]),
                            context_length=text_cfg["context_length"])
    return model, tokenizer, text_tower


def make_batch(model: UniMlip, tokenizer: Callable, batch_size: int, device: str,
               seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """A clean image batch [B, C, H, W] and tokenised captions [B, L]."""
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    texts = tokenizer([_CAPTIONS[i % len(_CAPTIONS)] for i in range(batch_size)])
    return images.to(device), texts.to(device)


def _configure(model: UniMlip, variant: str) -> Tuple[Callable, torch.nn.Module]:
    """Set the model up for ``variant``; returns its forward and loss."""
    from open_clip import ClipLoss
    from open_clip.model import CustomTextCLIP

    if variant == "clip":
        model.configure_terms(["itc"])
        model.set_simclr_active(False)
        return (lambda images, texts: CustomTextCLIP.forward(model, images, texts)), ClipLoss()
    terms = TERMS if variant == "unimlip" else ("itc", variant[1:])
    model.configure_terms(terms)
    model.set_simclr_active("simclr" in terms)
    weights = {t: (PAPER_WEIGHTS[t] if t in terms else 0.0) for t in TERMS}
    return model, UniMlipLoss(weights)


def _peak_rss_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (the peak resident set) of this process
        return True
    except OSError:
        return False


def _rss_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field_name}:\s+(\d+)", f.read()).group(1))


class _MemoryProbe:
    """Peak memory of one step: CUDA's allocator peak, or on CPU the peak resident set size
    (VmHWM, reset before each step) minus the resident size when the step starts."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.rss = not self.cuda and _peak_rss_reset()

    @property
    def kind(self) -> str:
        if self.cuda:
            return "torch.cuda.max_memory_allocated"
        if self.rss:
            return "CPU peak RSS growth during the step (VmHWM reset per step)"
        return "unavailable"

    def start(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        elif self.rss:
            _peak_rss_reset()
            self._base = _rss_kib("VmRSS")

    def stop_mib(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2 ** 20
        if self.rss:
            return (_rss_kib("VmHWM") - self._base) / 1024
        return float("nan")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train_step(
        model: UniMlip,
        images: torch.Tensor,
        texts: torch.Tensor,
        variants: Sequence[str] = VARIANTS,
        warmup: int = 2,
        iters: int = 5,
        amp_dtype: Optional[torch.dtype] = None,
        compile_model: bool = False,
) -> Tuple[List[StepMeasurement], str]:
    """Time, count and measure one training step of each variant; returns them and the memory kind.

    With ``compile_model`` each variant's forward is ``torch.compile``-d once (compilation
    happens in the warm-up steps) and timed compiled; FLOPs are counted on the eager forward,
    the same computation."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or "clip" not in variants:
        raise ValueError(f"variants must include 'clip' and come from {list(VARIANTS)}, got {list(variants)}")
    device = images.device
    model.train()
    # one optimizer over every parameter: a variant's inactive parameters get no gradient and are skipped
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
    probe = _MemoryProbe(device)

    def step(forward, loss_fn) -> float:
        """Runs one step; returns the seconds it took up to the end of backward."""
        begin = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            losses = loss_fn(**forward(images, texts), output_dict=True)
        sum(losses.values()).backward()
        _synchronize(device)
        model_seconds = time.perf_counter() - begin
        optimizer.step()
        return model_seconds

    compiled: Dict[str, Callable] = {}

    def timed_forward(variant: str) -> Tuple[Callable, torch.nn.Module]:
        forward, loss_fn = _configure(model, variant)
        if compile_model:
            if variant not in compiled:
                compiled[variant] = torch.compile(forward)
            forward = compiled[variant]
        return forward, loss_fn

    flops, memory = {}, {v: 0.0 for v in variants}
    seconds, model_seconds = {v: [] for v in variants}, {v: [] for v in variants}
    for variant in variants:
        forward, loss_fn = timed_forward(variant)
        for _ in range(warmup):
            step(forward, loss_fn)
        counter = FlopCounterMode(display=False)
        with counter:
            step(*_configure(model, variant))
        flops[variant] = counter.get_total_flops()
    for _ in range(iters):
        for variant in variants:
            forward, loss_fn = timed_forward(variant)
            _synchronize(device)
            probe.start()
            begin = time.perf_counter()
            model_seconds[variant].append(step(forward, loss_fn))
            _synchronize(device)
            seconds[variant].append(time.perf_counter() - begin)
            memory[variant] = max(memory[variant], probe.stop_mib())
    measurements = [StepMeasurement(v, seconds[v], model_seconds[v], flops[v], memory[v]) for v in variants]
    return measurements, probe.kind


def run_step_benchmark(
        size: str,
        batch_size: int,
        device: str = "cpu",
        variants: Sequence[str] = VARIANTS,
        warmup: int = 2,
        iters: int = 5,
        amp_dtype: Optional[torch.dtype] = None,
        seed: int = 0,
        compile_model: bool = False,
) -> StepReport:
    """Build the model of ``size`` and benchmark every variant on one fixed batch."""
    torch.manual_seed(seed)
    model, tokenizer, text_tower = build_model(size, device)
    images, texts = make_batch(model, tokenizer, batch_size, device, seed)
    measurements, memory_kind = bench_train_step(
        model, images, texts, variants, warmup, iters, amp_dtype, compile_model)
    precision = f"amp {str(amp_dtype).replace('torch.', '')}" if amp_dtype else "fp32"
    if compile_model:
        precision += ", torch.compile"
    return StepReport(
        model=SIZES[size], text_tower=text_tower, device=str(images.device), precision=precision,
        batch_size=batch_size, image_size=images.shape[-1], memory_kind=memory_kind, measurements=measurements)


def threads_note() -> str:
    return f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
