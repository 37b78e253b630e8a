"""The three-view train transform: OpenCLIP's own train view plus two strong SimCLR views.

The image is decoded once (by the data pipeline) and converted to a tensor once for the
two strong views; each view is then cropped and augmented independently. The strong
augmentations are the paper's (Sec. 4.2: colour jitter, random greyscale, Gaussian blur,
horizontal flip) with SimCLR's strengths; the crop is OpenCLIP's train crop, so the
strong views cover the same anatomy as the clean one.
"""
from typing import Optional, Sequence, Tuple

import torch
from torchvision import transforms as v1
from torchvision.transforms import v2


def _find(transform, kind):
    found = [t for t in getattr(transform, "transforms", []) if isinstance(t, kind)]
    if not found:
        raise ValueError(f"The train transform has no {kind.__name__}; cannot derive the SimCLR views from it")
    return found[0]


def strong_view_transform(
        size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        crop_scale: Tuple[float, float],
        jitter: float = 0.4,
        hue: float = 0.1,
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
) -> v2.Compose:
    """SimCLR's strong augmentation on a uint8 image tensor, ending in a normalised float tensor."""
    side = size[0] if isinstance(size, (tuple, list)) else size
    kernel = max(3, int(0.1 * side) // 2 * 2 + 1)  # SimCLR: 10% of the image side, odd
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=crop_scale, antialias=True),
        v2.RandomApply([v2.ColorJitter(jitter, jitter, jitter, hue)], p=jitter_p),
        v2.RandomGrayscale(p=grayscale_p),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_p),
        v2.RandomHorizontalFlip(),
        v2.Normalize(mean, std),
    ])


class ThreeViewTransform:
    """Maps one decoded image to a [3, C, H, W] tensor: clean view, strong view a, strong view b."""

    def __init__(self, base_transform: v1.Compose, crop_scale: Optional[Tuple[float, float]] = None):
        self.base_transform = base_transform
        crop = _find(base_transform, v1.RandomResizedCrop)
        normalize = _find(base_transform, v1.Normalize)
        self.strong_transform = strong_view_transform(
            crop.size, normalize.mean, normalize.std, crop_scale=crop_scale or crop.scale)
        self.to_tensor = v2.Compose([v2.RGB(), v2.PILToTensor()])

    @property
    def transforms(self):
        # open_clip_train's synthetic dataset reads transforms[0].size
        return self.base_transform.transforms

    def __call__(self, image) -> torch.Tensor:
        pixels = self.to_tensor(image)
        return torch.stack([self.base_transform(image), self.strong_transform(pixels), self.strong_transform(pixels)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(clean={self.base_transform}, strong={self.strong_transform})"
