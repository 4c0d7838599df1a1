"""MindEye2 (MedARC-AI/MindEyeV2) notebooks as memq jobs, launched the way its README and Slurm
scripts launch them (kind ``mindeye2.run``, grids/mindeye2.yaml)."""
