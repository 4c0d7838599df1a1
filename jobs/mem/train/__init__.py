"""Training Mem models inside memq jobs: the kinds ``mem.train`` and ``mem.topyneck``, the one
training run they share (``fit``), the LightningModule, the SYNC per-voxel loss weights, top-k
checkpoints with the resume file, and progress reported to memq."""
