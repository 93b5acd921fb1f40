"""Multi-label backdoor metrics (pure functions) and reading saved predictions."""

from medbackdoor.metrics.columns import MetricColumn, column_values, metric_columns, score_columns, table_columns
from medbackdoor.metrics.multilabel import (
                                            asr,
                                            auroc_nn,
                                            auroc_tn,
                                            auroc_tt,
                                            backdoor_metrics,
                                            mean_auroc,
                                            micro_auroc,
                                            mixed_auroc,
                                            mixed_rows,
                                            per_class_auroc,
)
from medbackdoor.metrics.predictions import load_predictions, save_predictions
from medbackdoor.metrics.stealth import image_psnr, image_ssim, stealth

__all__ = ["MetricColumn", "asr", "auroc_nn", "auroc_tn", "auroc_tt", "backdoor_metrics", "column_values",
           "image_psnr", "image_ssim",
           "load_predictions", "mean_auroc", "metric_columns", "micro_auroc", "mixed_auroc", "mixed_rows",
           "per_class_auroc", "save_predictions", "score_columns", "stealth", "table_columns"]
