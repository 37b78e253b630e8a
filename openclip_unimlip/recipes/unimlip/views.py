"""SimCLR's two strongly augmented views, made on the device from the clean train batch.

The data pipeline stays OpenCLIP's single-view one: each image is decoded, cropped and
normalised once in the workers, and the two strong views are drawn from that clean view as
one batched operation where the model runs. The workers do no extra work (none at all in
the epochs before SimCLR starts), the views work with every dataset type OpenCLIP reads, and
every parameter is drawn per sample on the device, without a host-device synchronisation.

The augmentations are the paper's (Sec. 4.2: "the implementation of the SimCLR augmentation
includes color jittering, random gray-scale conversion, random Gaussian blurring, and horizontal
flipping") with SimCLR's own strengths and probabilities by default (``VIEW_AUGMENTATIONS``,
each number with its source); ``"mocov2"`` keeps the weaker MoCo v2 jitter SLIP uses. The paper
lists no crop: by default the views share the clean view's crop (OpenCLIP's RandomResizedCrop);
``crop_scale`` adds an independent re-crop of each view, SLIP-style.

Colour jitter and greyscale are written here rather than taken from kornia, whose
``ColorJitter`` (torchvision's formulas, HSV hue) costs about 10x more per view on a CPU (2.8 ms
per 224 px view on two cores): every step of both is linear in RGB, so for each sample the whole
sequence folds into one 3x3 matrix and offset, applied by one batched matmul together with the
un-normalise/normalise pair. Two documented differences from torchvision: the hue shift is a
rotation of the chroma plane in YIQ (as NVIDIA DALI's hue operator; it keeps luma and leaves
grey pixels unchanged, like the HSV shift), and values are clamped to [0, 1] once at the end
instead of after every step. The order of the four jitter steps is drawn per sample, as
torchvision's ``ColorJitter`` draws it per image (and SimCLR's ``color_jitter_rand``); without the
intermediate clamps brightness, contrast and saturation commute, so in this folded form the
order only matters where the YIQ hue rotation meets the luma-based steps. The blur is torchvision's
kernel as grouped depthwise convolutions with a sigma per sample; the optional re-crop is kornia's.
"""
import dataclasses
import functools
import math
import weakref
from collections import deque
from typing import Deque, Dict, Optional, Sequence, Tuple, Union

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

# torchvision's rgb_to_grayscale weights
LUMA = (0.2989, 0.587, 0.114)
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)

JITTER_STEPS = ("brightness", "contrast", "saturation", "hue")


@dataclasses.dataclass(frozen=True)
class ViewAugmentation:
    """Strengths and probabilities of one strong view (torchvision's parameter conventions)."""
    jitter: float  # brightness, contrast and saturation factors drawn from U[max(0, 1 - jitter), 1 + jitter]
    hue: float  # hue shift drawn from U[-hue, hue], in turns
    jitter_p: float  # probability of the colour jitter
    grayscale_p: float  # probability of greyscale (independent of the jitter)
    blur_p: float  # probability of the Gaussian blur
    blur_sigma: Tuple[float, float]  # blur sigma drawn from U[low, high], in pixels
    flip_p: float  # probability of the horizontal flip


VIEW_AUGMENTATIONS: Dict[str, ViewAugmentation] = {
    # SimCLR (Chen et al. 2020), google-research/simclr data_util.py with run.py's default
    # color_jitter_strength s = 1.0 (appendix A, get_color_distortion): color_jitter gives brightness,
    # contrast, saturation 0.8*s and hue 0.2*s; random_color_jitter applies it with p 0.8, then
    # to_grayscale with p 0.2; random_blur: sigma U[0.1, 2.0], kernel height//10 made odd, p 0.5
    # (batch_random_blur); preprocess_for_train: random_flip_left_right, p 0.5.
    "simclr": ViewAugmentation(jitter=0.8, hue=0.2, jitter_p=0.8, grayscale_p=0.2, blur_p=0.5,
                               blur_sigma=(0.1, 2.0), flip_p=0.5),
    # MoCo v2's augmentation as SLIP uses it (facebookresearch/SLIP datasets.py get_dataset:
    # ColorJitter(0.4, 0.4, 0.4, 0.1) "not strengthened" with p 0.8, RandomGrayscale(p=0.2),
    # GaussianBlur([.1, 2.]) with p 0.5, RandomHorizontalFlip()); ours: the blur keeps SimCLR's
    # kernel of 10% of the side where SLIP's PIL blur takes sigma as its radius.
    "mocov2": ViewAugmentation(jitter=0.4, hue=0.1, jitter_p=0.8, grayscale_p=0.2, blur_p=0.5,
                               blur_sigma=(0.1, 2.0), flip_p=0.5),
}


@functools.lru_cache(maxsize=None)
def _colour_constants(device: torch.device, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Luma weights, RGB->YIQ and YIQ->RGB on ``device``: copied there once, not every step."""
    return tuple(torch.as_tensor(c, dtype=dtype).to(device) for c in (LUMA, _RGB_TO_YIQ, _YIQ_TO_RGB))


def simclr_blur_kernel_size(image_size: int) -> int:
    """SimCLR's blur kernel (``random_blur``: ``height // 10``, made odd); ours: at least 3."""
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)


def hue_rotation(turns: torch.Tensor) -> torch.Tensor:
    """[B, 3, 3] RGB matrices rotating the YIQ chroma plane by ``turns`` (fractions of a full turn)."""
    angle = turns * 2 * math.pi
    rotation = torch.zeros(*turns.shape, 3, 3, dtype=turns.dtype, device=turns.device)
    rotation[..., 0, 0] = 1
    rotation[..., 1, 1], rotation[..., 1, 2] = angle.cos(), -angle.sin()
    rotation[..., 2, 1], rotation[..., 2, 2] = angle.sin(), angle.cos()
    _, to_yiq, to_rgb = _colour_constants(turns.device, turns.dtype)
    return to_rgb @ rotation @ to_yiq


def colour_transform(
        brightness: torch.Tensor,
        contrast: torch.Tensor,
        saturation: torch.Tensor,
        hue: torch.Tensor,
        greyscale: torch.Tensor,
        order: Union[torch.Tensor, Sequence[int]],
        channel_means: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(matrix [B, 3, 3], offset [B, 3])`` with ``jittered = matrix @ rgb + offset``:
    torchvision's brightness, contrast and saturation formulas and a YIQ hue rotation, applied in
    ``order`` (indices into ``JITTER_STEPS``: [B, steps] per sample, or one sequence for all), then
    greyscale where ``greyscale`` is true. ``channel_means`` [B, 3] are the images' mean RGB values,
    which contrast blends towards (as the mean grey value, tracked through the steps before it)."""
    batch, device, dtype = brightness.shape[0], brightness.device, brightness.dtype
    orders = torch.as_tensor(order, device=device, dtype=torch.long)
    orders = orders.expand(batch, -1) if orders.dim() == 1 else orders
    eye = torch.eye(3, device=device, dtype=dtype).expand(batch, 3, 3)
    luma = _colour_constants(device, dtype)[0]
    to_grey = torch.ones(3, 1, device=device, dtype=dtype) * luma  # every channel <- luma
    s = saturation.view(-1, 1, 1)
    step_matrices = torch.stack([brightness.view(-1, 1, 1) * eye, contrast.view(-1, 1, 1) * eye,
                                 s * eye + (1 - s) * to_grey, hue_rotation(hue)], dim=1)  # [B, 4, 3, 3]
    rows = torch.arange(batch, device=device)
    matrix, offset = eye, torch.zeros(batch, 3, device=device, dtype=dtype)
    for position in range(orders.shape[1]):
        step = orders[:, position]
        mean_grey = ((matrix @ channel_means.unsqueeze(-1)).squeeze(-1) + offset) @ luma
        # only contrast has an offset: it blends towards the current mean grey value
        step_offset = torch.where((step == 1).unsqueeze(-1), ((1 - contrast) * mean_grey).unsqueeze(-1), 0.0)
        step_matrix = step_matrices[rows, step]
        matrix = step_matrix @ matrix
        offset = (step_matrix @ offset.unsqueeze(-1)).squeeze(-1) + step_offset
    grey = greyscale.view(-1, 1, 1)
    matrix = torch.where(grey, to_grey @ matrix, matrix)
    offset = torch.where(grey.view(-1, 1), (to_grey @ offset.unsqueeze(-1)).squeeze(-1), offset)
    return matrix, offset


def random_subset(batch: int, p: float, device: torch.device) -> torch.Tensor:
    """Indices of the samples an augmentation with probability ``p`` applies to. The count is
    drawn on the host (Binomial(batch, p)) and the members on the device, which gives every
    sample an independent Bernoulli(p) without the host reading a device tensor."""
    count = int(torch.binomial(torch.tensor(float(batch)), torch.tensor(float(p))).item())
    return torch.randperm(batch, device=device)[:count]


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """[N, kernel_size] normalised 1-D Gaussians (torchvision's ``_get_gaussian_kernel1d``)."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, kernel_size, device=sigma.device, dtype=sigma.dtype)
    pdf = torch.exp(-0.5 * (x / sigma.unsqueeze(-1)).pow(2))
    return pdf / pdf.sum(-1, keepdim=True)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur of [N, C, H, W] with one sigma per image and reflect padding
    (torchvision's ``gaussian_blur``), as two depthwise convolutions over all N*C planes."""
    n, c, h, w = images.shape
    kernels = gaussian_kernels(sigma, kernel_size).repeat_interleave(c, dim=0)
    pad = kernel_size // 2
    planes = F.pad(images.reshape(1, n * c, h, w), [pad, pad, pad, pad], mode="reflect")
    planes = F.conv2d(planes, kernels.view(n * c, 1, 1, kernel_size), groups=n * c)
    planes = F.conv2d(planes, kernels.view(n * c, 1, kernel_size, 1), groups=n * c)
    return planes.view(n, c, h, w)


class StrongViews(nn.Module):
    """``(view_a, view_b) = StrongViews(image_size)(images)`` for a normalised [B, 3, H, W] batch,
    normalised with the clean view's mean and std (``set_normalization``; OpenCLIP's defaults
    until told otherwise)."""

    def __init__(
            self,
            image_size: int,
            crop_scale: Optional[Tuple[float, float]] = None,
            augmentation: Union[str, ViewAugmentation] = "simclr",
            **overrides,
    ):
        """``augmentation``: a name in ``VIEW_AUGMENTATIONS`` or a ``ViewAugmentation``;
        ``overrides``: single fields of it (e.g. ``blur_p=0``)."""
        super().__init__()
        if isinstance(augmentation, str):
            if augmentation not in VIEW_AUGMENTATIONS:
                raise ValueError(f"unknown view augmentation {augmentation!r}; known: {sorted(VIEW_AUGMENTATIONS)}")
            augmentation = VIEW_AUGMENTATIONS[augmentation]
        self.augmentation = dataclasses.replace(augmentation, **overrides)
        a = self.augmentation
        self.jitter, self.hue, self.jitter_p, self.grayscale_p = a.jitter, a.hue, a.jitter_p, a.grayscale_p
        self.blur_p, self.blur_sigma, self.flip_p = a.blur_p, a.blur_sigma, a.flip_p
        self.blur_kernel_size = simclr_blur_kernel_size(image_size)
        self.crop = K.RandomResizedCrop((image_size, image_size), scale=tuple(crop_scale)) if crop_scale else None
        # not persistent: checkpoints stay OpenCLIP's, and set_normalization sets them anyway
        self.register_buffer("mean", torch.empty(3), persistent=False)
        self.register_buffer("std", torch.empty(3), persistent=False)
        self._normalization: Tuple[Tuple[float, ...], Tuple[float, ...]] = ((), ())
        self.set_normalization(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
        # OpenCLIP's --accum-freq feeds each micro-batch twice: a pass without gradients that
        # caches features, then one with gradients that recomputes them; both must see the same
        # views to equal one large batch. Passes without gradients record the RNG state their
        # views were drawn with (the CPU generator's and, for a CUDA batch, its device's; None
        # otherwise), and the next pass with gradients over the same tensor replays it.
        self._recorded_draws: Deque[Tuple[weakref.ref, torch.Tensor, Optional[torch.Tensor]]] = deque(maxlen=64)

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """The mean and std the clean view was normalised with; a no-op when unchanged, so the
        model can call it every step without a host-to-device copy."""
        normalization = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
        if normalization == self._normalization:
            return
        if len(normalization[0]) != 3 or len(normalization[1]) != 3:
            raise ValueError(f"the SimCLR views need a 3-channel mean and std, got {mean} and {std}")
        self.mean.copy_(torch.tensor(normalization[0]))
        self.std.copy_(torch.tensor(normalization[1]))
        self._normalization = normalization

    def _random_colour(self, channel_means: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Colour jitter and greyscale, drawn per sample, as affine maps on normalised values:
        ``(matrix [N, 3, 3], offset [N, 3])``; ``channel_means`` [N, 3] are the normalised images'."""
        batch, device = channel_means.shape[0], channel_means.device
        mean, std = self.mean.float(), self.std.float()
        jittered = torch.rand(batch, device=device) < self.jitter_p

        def factors(low: float, high: float, neutral: float) -> torch.Tensor:
            drawn = torch.empty(batch, device=device).uniform_(low, high)
            return torch.where(jittered, drawn, torch.full_like(drawn, neutral))

        strength = (max(0.0, 1 - self.jitter), 1 + self.jitter)
        matrix, offset = colour_transform(
            brightness=factors(*strength, 1.0),
            contrast=factors(*strength, 1.0),
            saturation=factors(*strength, 1.0),
            hue=factors(-self.hue, self.hue, 0.0),
            greyscale=torch.rand(batch, device=device) < self.grayscale_p,
            # a random permutation per sample, as torchvision's ColorJitter draws one per image
            order=torch.rand(batch, len(JITTER_STEPS), device=device).argsort(dim=1),
            channel_means=channel_means * std + mean,
        )
        # fold the un-normalise / normalise pair in: x' = (M (std x + mean) + t - mean) / std
        normalised_offset = ((matrix @ mean.unsqueeze(-1)).squeeze(-1) + offset - mean) / std
        return matrix * std.view(1, 1, 3) / std.view(1, 3, 1), normalised_offset

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if not torch.is_grad_enabled():
            cuda_state = torch.cuda.get_rng_state(images.device) if images.is_cuda else None
            self._recorded_draws.append((weakref.ref(images), torch.get_rng_state(), cuda_state))
            return self._draw(images)
        for index, (batch_ref, cpu_state, cuda_state) in enumerate(self._recorded_draws):
            if batch_ref() is images:
                del self._recorded_draws[index]
                with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
                    torch.set_rng_state(cpu_state)
                    if cuda_state is not None:
                        torch.cuda.set_rng_state(cuda_state, images.device)
                    return self._draw(images)
        return self._draw(images)

    @torch.no_grad()
    def _draw(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # float32 whatever the autocast context: the views are inputs, not activations
        with torch.autocast(images.device.type, enabled=False):
            clean = images.float()
            batch, channels, height, width = clean.shape
            if self.crop is None:  # both views start from the clean view itself: no copy
                sources = clean.reshape(1, batch, channels, height * width)
                source_means = clean.mean((-2, -1)).repeat(2, 1)
            else:
                recropped = self.crop(clean.repeat(2, 1, 1, 1))
                sources = recropped.reshape(2, batch, channels, height * width)
                source_means = recropped.mean((-2, -1))
            matrix, offset = self._random_colour(source_means)
            matrices, offsets = matrix.view(2, batch, 3, 3), offset.view(2, batch, 3, 1)
            pair = clean.new_empty(2, batch, channels, height * width)
            for view in range(2):
                torch.baddbmm(offsets[view], matrices[view], sources[view % len(sources)], out=pair[view])
            pair = pair.view(2 * batch, channels, height, width)
            mean, std = self.mean.float().view(1, 3, 1, 1), self.std.float().view(1, 3, 1, 1)
            pair = pair.clamp_(min=-mean / std, max=(1 - mean) / std)  # [0, 1] in pixel space
            # blur and flip are linear with unit-sum kernels: they act alike on normalised values
            blurred = random_subset(2 * batch, self.blur_p, pair.device)
            if len(blurred):  # a host-side count: no synchronisation
                sigma = torch.empty(len(blurred), device=pair.device).uniform_(*self.blur_sigma)
                pair[blurred] = gaussian_blur(pair[blurred], sigma, self.blur_kernel_size)
            flipped = random_subset(2 * batch, self.flip_p, pair.device)
            pair[flipped] = pair[flipped].flip(-1)
        view_a, view_b = pair.to(images.dtype).chunk(2)
        return view_a, view_b
