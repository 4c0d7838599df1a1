"""LoRA: a trainable low-rank update beside a frozen linear layer (mem-spec 2.1)."""

from __future__ import annotations

from torch import Tensor, nn

# the linear layers of a timm ViT block that receive an update
LORA_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


class LoRALinear(nn.Module):
    """``base(x) + scale * up(down(x))``; ``up`` starts at zero, so at init this equals ``base``."""

    def __init__(self, base: nn.Linear, rank: int, scale: float) -> None:
        super().__init__()
        if rank > min(base.in_features, base.out_features):
            raise ValueError(f"LoRA rank {rank} exceeds the smaller side of {base}")
        self.base = base
        self.scale = scale
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.normal_(self.down.weight, std=1 / rank)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * self.up(self.down(x))


def add_lora(block: nn.Module, rank: int, scale: float) -> None:
    """Wrap the LORA_TARGETS linear layers of ``block`` in place."""
    for path in LORA_TARGETS:
        parent_path, _, name = path.rpartition(".")
        parent = block.get_submodule(parent_path)
        setattr(parent, name, LoRALinear(getattr(parent, name), rank, scale))
