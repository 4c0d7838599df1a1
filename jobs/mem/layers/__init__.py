"""The building blocks of the Mem network (mem-spec 2.1-2.7): the conditioned ViT backbone with
LoRA and AdaLN-zero, behaviour embedding, heads on the tapped layers, the per-subject voxel maps
and coordinate MLPs, the image and memory branches, the voxel-wise readout, and the grouping of a
mixed batch by subject that they share. They know nothing of jobs, data files or training (the
backbone reads installed weights through jobs/weights); ``jobs/mem/model.py`` assembles them."""
