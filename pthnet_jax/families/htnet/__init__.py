"""HTNet (Wang et al., Neurocomputing 2024) as a family of the shared harness.

Modules: `config` (HTNetConfig), `model` (Flax HTNet), `convert` (the original's per-subject `.pth`
files, `detect`), `flow` (flow images, landmark table, mosaic), `dataset` (TFDS import, synthetic
checkout), `metrics` (UF1/UAR), `protocol` (LOSO splits, batch order, epoch selection, pooling),
`landmarks` (optional MTCNN extra), `task` (the harness's `TASK`), `files` (`pthnet convert`), `loso`
(leave-one-subject-out through the many-runs trainer).
"""
from pthnet_jax.families.htnet.convert import detect
from pthnet_jax.families.htnet.files import export_file, import_file
from pthnet_jax.families.htnet.task import TASK

__all__ = ["TASK", "detect", "export_file", "import_file"]
