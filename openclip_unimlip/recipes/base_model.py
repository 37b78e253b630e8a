"""What every recipe's model shares: OpenCLIP's ``CustomTextCLIP`` in eval mode (so OpenCLIP's
evaluation, zero-shot code and clip_benchmark see a CLIP) and the recipe's training branches,
``_forward_train``, when training on image-text pairs."""
from typing import Optional

import torch
from open_clip.model import CustomTextCLIP


class RecipeCLIP(CustomTextCLIP):
    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None):
        if not self.training or image is None or text is None:
            return super().forward(image, text)
        return self._forward_train(image, text)
