"""What every recipe's model shares: OpenCLIP's ``CustomTextCLIP`` in eval mode (so OpenCLIP's
evaluation, zero-shot code and clip_benchmark see a CLIP) and the recipe's training branches,
``_forward_train``, when training on image-text pairs."""
from typing import Optional

import torch
from open_clip.model import CustomTextCLIP
from torch import nn


class RecipeCLIP(CustomTextCLIP):
    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None):
        if not self.training or image is None or text is None:
            return super().forward(image, text)
        return self._forward_train(image, text)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP and ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model
