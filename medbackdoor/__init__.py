"""medbackdoor: attack, measure, explain and defend against backdoors in medical-imaging classifiers."""

from medbackdoor.labels import LABELS, NUM_CLASSES

__version__ = "0.1.0"
__all__ = ["LABELS", "NUM_CLASSES", "__version__"]
