"""LSTPNet (Lu et al., PRCV 2023 / IVC 2024) as a family of the shared harness.

`TASK` (task.py) is what the trainer, evaluation and checkpoints ask of the family: the model of
model.py, cross-entropy, BatchNorm statistics as model state, and clips read by a grain pipeline
(clip_pipeline.py) from the frames dataset `pthnet import-clips` writes (clip_data.py).
"""
from pthnet_jax.families.lstpnet.files import detect, export_file, import_file
from pthnet_jax.families.lstpnet.task import TASK

__all__ = ["TASK", "detect", "export_file", "import_file"]
