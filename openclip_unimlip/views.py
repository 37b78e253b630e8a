"""The three-view train transform: OpenCLIP's own train view plus two strong SimCLR views.

The image is decoded once (by the data pipeline); each view is cropped from it and
augmented independently. The strong augmentations are the paper's (Sec. 4.2: colour jitter,
random greyscale, Gaussian blur, horizontal flip) with SimCLR's strengths; the crop is
OpenCLIP's train crop, so the strong views cover the same anatomy as the clean one.

Cost: a strong view is cropped first, so every later op sees only the output size. Crop and
colour ops run on the PIL image (PIL's uint8 C kernels; torchvision's tensor hue adjustment
converts to float HSV and costs ~10x more), the blur is a separable convolution (the same
Gaussian kernel as torchvision's, 2k instead of k^2 taps per pixel).
"""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torchvision import transforms as v1
from torchvision.transforms import v2


def _find(transform, kind):
    found = [t for t in getattr(transform, "transforms", []) if isinstance(t, kind)]
    if not found:
        raise ValueError(f"The train transform has no {kind.__name__}; cannot derive the SimCLR views from it")
    return found[0]


class SeparableGaussianBlur:
    """``v2.GaussianBlur`` (same sigma sampling, kernel and reflect padding) on a float
    [..., C, H, W] tensor, as a row then a column pass."""

    def __init__(self, kernel_size: int, sigma: Tuple[float, float] = (0.1, 2.0)):
        if kernel_size % 2 == 0 or kernel_size < 1:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        self.kernel_size = kernel_size
        self.sigma = sigma

    def _kernel(self, sigma: float, dtype: torch.dtype) -> torch.Tensor:
        # torchvision's _get_gaussian_kernel1d
        lim = (self.kernel_size - 1) / (2.0 * math.sqrt(2.0))
        x = torch.linspace(-lim, lim, steps=self.kernel_size, dtype=dtype)
        return torch.softmax(x.div(sigma).pow(2).neg(), dim=0)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        sigma = torch.empty(1).uniform_(self.sigma[0], self.sigma[1]).item()
        kernel = self._kernel(sigma, image.dtype).to(image.device)
        shape = image.shape
        x = image.reshape(-1, *shape[-3:])
        channels, pad = shape[-3], self.kernel_size // 2
        x = F.pad(x, [pad, pad, pad, pad], mode="reflect")
        x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
        x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
        return x.reshape(shape)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kernel_size={self.kernel_size}, sigma={self.sigma})"


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
    """SimCLR's strong augmentation of a decoded PIL image, ending in a normalised float tensor."""
    side = size[0] if isinstance(size, (tuple, list)) else size
    kernel = max(3, int(0.1 * side) // 2 * 2 + 1)  # SimCLR: 10% of the image side, odd
    return v2.Compose([
        v2.RGB(),
        v2.RandomResizedCrop(size, scale=crop_scale, antialias=True),
        v2.RandomApply([v2.ColorJitter(jitter, jitter, jitter, hue)], p=jitter_p),
        v2.RandomGrayscale(p=grayscale_p),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomApply([SeparableGaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_p),
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

    @property
    def transforms(self):
        # open_clip_train's synthetic dataset reads transforms[0].size
        return self.base_transform.transforms

    def __call__(self, image) -> torch.Tensor:
        return torch.stack([self.base_transform(image), self.strong_transform(image), self.strong_transform(image)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(clean={self.base_transform}, strong={self.strong_transform})"
