"""Models, registered by name; each splits into ``forward_features`` and ``forward_head(..., pre_logits=...)``
and declares its metadata (:class:`~medbackdoor.models.info.ModelInfo`). Adding one is its own file plus its
registration: import it here."""

from medbackdoor.models.densenet import DenseNet121
from medbackdoor.models.inputs import check_input_channels
from medbackdoor.models.registry import MODELS, arch_info, create_model, model_factory
from medbackdoor.models.resnet import ResNet50
from medbackdoor.models.vit import ViTB16

__all__ = ["MODELS", "DenseNet121", "ResNet50", "ViTB16", "arch_info", "check_input_channels", "create_model",
           "model_factory"]
