"""Explainability: saliency maps and what they reveal about triggers."""

from medbackdoor.explain.cam import CAMS, BaseCAM, GradCAM, GradCAMPlusPlus, grad_cam, resolve_layer

__all__ = ["CAMS", "BaseCAM", "GradCAM", "GradCAMPlusPlus", "grad_cam", "resolve_layer"]
