"""ViT-B/16 for 14-label chest X-ray classification, from torchvision, at any ``image_size`` its patch divides."""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torchvision.models import vision_transformer as tv_vit

from medbackdoor.errors import UserError
from medbackdoor.models.info import ModelInfo
from medbackdoor.models.inputs import IMAGENET_INPUT, GrayToRGB, torchvision_weights
from medbackdoor.models.registry import MODELS

DEPTH, HEADS, WIDTH, MLP = 12, 12, 768, 3072  # ViT-B
PRETRAINED_SIZE, PRETRAINED_PATCH = 224, 16  # torchvision's ImageNet weights


def vit_info(patch_size: int = 16) -> ModelInfo:
    """ViT-B's metadata for a patch size (the size rule depends on it); one line for a patch size that is not a
    positive whole number."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise UserError(f"vit_b_16 patch_size must be a whole number of at least 1, got {patch_size!r}")
    return ModelInfo(
        layers={
            # Grad-CAM on a ViT reads the tokens *entering* a block (its first LayerNorm's output), laid back on the
            # patch grid. "last" is the final block's: after its attention the head reads the class token alone, so
            # the gradient of the final block's output (or of the final norm) with respect to every patch token is
            # zero, and the last place where patch tokens still reach the logits is the input of that attention.
            "last": f"encoder.layers.encoder_layer_{DEPTH - 1}.ln_1",
            # halfway: the input of block 7 of 12, the output of the first six. A ViT keeps one grid size at every
            # depth, so there is no "same depth, twice the resolution" layer as the paper's DenseNet middle layer;
            # half the blocks is the middle of the computation.
            "middle": f"encoder.layers.encoder_layer_{DEPTH // 2}.ln_1",
            # fine-pruning prunes neurons of the last block's MLP (its GELU, 3,072 of them), the transformer's
            # counterpart of a CNN's final feature channels
            "prune": f"encoder.layers.encoder_layer_{DEPTH - 1}.mlp.1",
        },
        min_size=patch_size,
        size_multiple=patch_size,
        input=IMAGENET_INPUT,
        layout="tokens",
        prefix_tokens=1,  # the class token
        norm="layer",
    )


@MODELS.register("vit_b_16")
class ViTB16(nn.Module):
    """torchvision ViT-B/16 (Dosovitskiy et al. 2021) with a 14-logit head, taking gray images in [0, 1].

    Its position embeddings are built for one ``image_size``; any size its patch divides works (64 px with patch
    16: a 4×4 grid of patches). ``forward_features`` returns the token sequence after the final LayerNorm
    (B×(1 + N)×768, class token first); ``forward_head`` reads the class token.

    Args:
        num_classes: outputs (logits).
        imagenet: start from torchvision's ImageNet weights (``IMAGENET1K_V1``, 224 px, patch 16); at another
            ``image_size`` the position embeddings are interpolated (torchvision's ``interpolate_embeddings``).
        image_size: the input side in px (given by the run's config).
        patch_size: the patch side (``model.options.patch_size``); ImageNet weights need 16.
    """

    info = vit_info(16)

    def __init__(self, num_classes: int = 14, imagenet: bool = False, image_size: int = 224,
                 patch_size: int = 16) -> None:
        super().__init__()
        self.info = vit_info(patch_size)
        self.info.check_size(image_size, "vit_b_16")
        if imagenet and patch_size != PRETRAINED_PATCH:
            raise UserError(f"vit_b_16: ImageNet weights have patch size {PRETRAINED_PATCH}, not {patch_size}")
        net = tv_vit.VisionTransformer(image_size, patch_size, DEPTH, HEADS, WIDTH, MLP)
        if imagenet:
            weights = torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1
            state = torchvision_weights(torchvision.models.vit_b_16, weights).state_dict()
            if image_size != PRETRAINED_SIZE:
                state = tv_vit.interpolate_embeddings(image_size, patch_size, state)
            net.load_state_dict(state)
        self.image_size, self.patch_size = image_size, patch_size
        self.input = GrayToRGB()
        self.conv_proj, self.class_token, self.encoder = net.conv_proj, net.class_token, net.encoder
        self.head = nn.Linear(WIDTH, num_classes)

    @classmethod
    def describe(cls, patch_size: int = 16, **_options) -> ModelInfo:
        """The metadata of a model built with these options (without building it)."""
        return vit_info(patch_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(self.input(x))  # B×768×h×w
        tokens = x.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_token.expand(len(tokens), -1, -1), tokens], dim=1)
        return self.encoder(tokens)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = features[:, 0]
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
