"""HTNet (Wang et al., Neurocomputing 2024) as a family of the shared harness.

Modules: `config` (HTNetConfig), `model` (Flax HTNet), `convert` (the original's per-subject `.pth`
files, `detect`), `flow` (flow images, landmark table, mosaic), `dataset` (TFDS import, synthetic
checkout), `metrics` (UF1/UAR), `protocol` (LOSO splits, batch order, epoch selection, pooling),
`landmarks` (optional MTCNN extra). The harness's `TASK` is not written yet (see the README).
"""
