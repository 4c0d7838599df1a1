"""The building blocks of the Mem network (mem-spec 2.1-2.7): the conditioned ViT backbone with
LoRA and AdaLN-zero, behaviour embedding, heads on the tapped layers, the per-subject voxel maps
and coordinate MLPs, the image and memory branches, and the voxel-wise readout. Each is a plain
``nn.Module`` that knows nothing of jobs, files or training; ``jobs/mem/model.py`` assembles them."""
