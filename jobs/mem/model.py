"""The Memory Encoding Model: one network for all subjects, per-subject modules keyed by name (mem-spec 2)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from jobs.mem.config import MemConfig, ModelConfig
from jobs.mem.layers.behaviour_embed import BehaviourEmbed
from jobs.mem.layers.coords import CoordsMode
from jobs.mem.layers.frames import CurrentFrame, PreviousFrame, retina_features
from jobs.mem.layers.groups import SubjectGroups
from jobs.mem.layers.mappers import LayerSelector, RetinaMapper, negative_entropy
from jobs.mem.layers.memory_branch import MemoryBranch
from jobs.mem.layers.readout import FreeVoxelWeights, SharedVoxelWeights, apply_readout
from jobs.mem.subject import SubjectInfo
from jobs.weights.state_dict import read_state_dict

# parameter-name prefixes of the "topyneck": trained per subject once, then loaded frozen (mem-spec 3.4)
TOPYNECK_GROUPS = ("retina_mapper", "layer_selector")


def read_topyneck(path: str) -> dict[str, Tensor]:
    """The tensors of a topyneck file (``retina_mapper.<subject>.*``, ``layer_selector.<subject>.*``)."""
    return read_state_dict(path, "MODEL.TOPYNECK_PATH")


class MemOutput(NamedTuple):
    """What :meth:`MemModel.forward_subjects` returns."""

    preds: dict[str, Tensor]  # subject -> predictions [B_s, n_s]
    # sum over the subjects of the LayerSelector negative entropy of the voxels predicted (its
    # negation with SWITCHES.LAYER_ENTROPY sharp); a frozen LayerSelector adds 0 (mem-spec 2.3)
    regularizer: Tensor


def _voxel_weights(config: ModelConfig, positions: Tensor, mode: CoordsMode) -> nn.Module:
    shared = config.VOXEL_OUTS.SHARED
    if shared.USE:
        return SharedVoxelWeights(positions, config.d_model, shared.MLP.WIDTH, shared.MLP.DEPTH, mode)
    return FreeVoxelWeights(len(positions), config.d_model)


class MemModel(nn.Module):
    """Predicts one subject's voxel responses from the current image, the previous image, the
    cached features of older frames and the behaviour of all of them.

    Frozen pretrained ViT weights are the installed weights ``MODEL.BACKBONE*.WEIGHTS`` names on
    ``weights_root`` (or random ones where a setting says ``random``); a frozen topyneck comes from
    ``MODEL.TOPYNECK_PATH`` (loaded here when set). Checkpoints hold only
    :meth:`trainable_state_dict`, so a model rebuilt from the same config and subjects restores
    fully from one.
    """

    def __init__(
        self, config: MemConfig, subjects: Mapping[str, SubjectInfo], weights_root: Path | None = None
    ) -> None:
        super().__init__()
        model, names, img_size = config.MODEL, list(subjects), config.DATASET.IMAGE_SIZE
        cond, coords_mlp, off = model.COND, model.COORDS_MLP, config.ABLATION
        bhv = config.behaviour_dim
        self.chunk_size = model.CHUNK_SIZE
        self.n_voxels = {s: info.n_voxels for s, info in subjects.items()}
        self.use_behaviour = off.BEHAVIOUR
        # Modules an ablation switches off are not built (None); their features enter the readout
        # as zeros of their usual widths (jobs/mem/ablation.py).
        self.zero_widths = {
            "previous": 0 if off.MEMORY_IMAGES else model.prev_width,
            "memory": 0 if off.MEMORY_IMAGES else model.merge_width,
            "behav_pt": 0 if off.BEHAVIOUR_PASSTHROUGH else model.passthrough_dim,
            "behav_pt_prev": 0 if off.MEMORY_IMAGES else model.passthrough_dim,
        }
        self.current = CurrentFrame(model, img_size, names, weights_root, bhv_dim=bhv, grids=off.RETINA_MAPPER)
        self.previous = PreviousFrame(model, img_size, names, weights_root, bhv_dim=bhv) if off.MEMORY_IMAGES else None
        self.memory = MemoryBranch(model, config.DATASET.N_PREV_FRAMES - 1, names, bhv) if off.MEMORY_IMAGES else None
        self.behav_pt = (
            BehaviourEmbed(names, bhv, model.passthrough_dim, cond.DROPOUT) if off.BEHAVIOUR_PASSTHROUGH else None
        )
        self.behav_pt_prev = (
            BehaviourEmbed(names, bhv, model.passthrough_dim, cond.DROPOUT) if off.MEMORY_IMAGES else None
        )
        if config.EXPERIMENTAL.BACKBONE_NOGRAD:  # the reference freezes each ViT with its condition's embedder
            for branch in (self.current, self.previous):
                if branch is not None:
                    branch.backbone.requires_grad_(False)
                    branch.behav_embed.requires_grad_(False)
        mode = CoordsMode.of(config)
        self.entropy_sign = -1.0 if config.switch("LAYER_ENTROPY") == "sharp" else 1.0
        positions = {s: info.positions(mode) for s, info in subjects.items()}
        self.retina_mapper = nn.ModuleDict(
            {
                s: RetinaMapper(p, coords_mlp.WIDTH, coords_mlp.DEPTH, model.RETINA_MAPPER.SIGMA, mode)
                for s, p in positions.items()
            }
        ) if off.RETINA_MAPPER else None
        n_layers = len(model.BACKBONE.LAYERS)
        self.layer_selector = nn.ModuleDict(
            {s: LayerSelector(p, n_layers, coords_mlp.WIDTH, coords_mlp.DEPTH, mode) for s, p in positions.items()}
        ) if off.LAYER_SELECTOR else None
        self.readout = nn.ModuleDict({s: _voxel_weights(model, p, mode) for s, p in positions.items()})
        if model.TOPYNECK_PATH is not None:
            self.load_topyneck(read_topyneck(model.TOPYNECK_PATH), source=model.TOPYNECK_PATH)

    def forward(self, batch: Mapping[str, Tensor], subject: str, voxels: Tensor | None = None) -> Tensor:
        """Predictions [B, n] for one subject's samples: :meth:`forward_subjects` with one subject.

        batch: "img", "prev_img" [B, 3, H, W] (T=0, T=-1), "prev_feats" [B, N-1, F] (T=-2..-N),
        "bhv" [B, 35] (T=0), "prev_bhvs" [B, N, 35] (T=-1..-N); 35 or the columns ABLATION keeps,
        and no "prev_*" without ABLATION.MEMORY_IMAGES. ``voxels``: positions into the
        subject's modelled voxels; None predicts all of them. Voxels run in CHUNK_SIZE chunks.
        """
        return self.forward_subjects({subject: batch}, {subject: voxels}).preds[subject]

    def forward_subjects(
        self, batches: Mapping[str, Mapping[str, Tensor]], voxels: Mapping[str, Tensor | None] | None = None
    ) -> MemOutput:
        """Predictions for a batch that mixes subjects, grouped as ``collate_by_subject`` groups it.

        ``batches``: subject -> that subject's samples (the fields of :meth:`forward`);
        ``voxels``: subject -> positions into its modelled voxels, all of them where absent or None.
        Both ViTs and every shared module run once over all samples, each per-subject module once
        over its subject's samples; only the per-voxel part runs subject by subject.
        """
        groups = SubjectGroups(tuple(batches), tuple(len(b["img"]) for b in batches.values()))

        def field(key: str) -> Tensor:
            return torch.cat([b[key] for b in batches.values()])

        bhv = field("bhv") if self.use_behaviour else torch.zeros_like(field("bhv"))
        grids, cls = self.current(field("img"), bhv, groups)
        shared = torch.cat(self._shared_features(field, bhv, groups, cls), dim=-1)
        voxels = voxels or {}
        preds, regularizers = {}, []
        for subject, rows in groups.slices():
            selected = voxels.get(subject)
            if selected is None:
                selected = torch.arange(self.n_voxels[subject], device=cls.device)
            selector = None if self.layer_selector is None else self.layer_selector[subject]
            layer_weights = None if selector is None else selector(selected)
            preds[subject] = self._predict(
                [grid[rows] for grid in grids], cls[rows], shared[rows], subject, selected, layer_weights
            )
            if selector is not None and layer_weights is not None and selector.trainable:
                regularizers.append(self.entropy_sign * negative_entropy(layer_weights))
        regularizer = torch.stack(regularizers).sum() if regularizers else torch.zeros((), device=cls.device)
        return MemOutput(preds, regularizer)

    def _shared_features(
        self, field: Callable[[str], Tensor], bhv: Tensor, groups: SubjectGroups, cls: Tensor
    ) -> list[Tensor]:
        """[x_prev, x_mem, c_pt0, c_pt1] of every sample; zeros [B, width] for a module switched off."""
        parts = {name: cls.new_zeros(len(cls), width) for name, width in self.zero_widths.items() if width}
        if self.previous is not None and self.memory is not None and self.behav_pt_prev is not None:
            prev_bhvs = field("prev_bhvs") if self.use_behaviour else torch.zeros_like(field("prev_bhvs"))
            parts["previous"] = self.previous(field("prev_img"), prev_bhvs[:, 0], groups)
            parts["memory"] = self.memory(field("prev_feats"), prev_bhvs[:, 1:], groups)
            parts["behav_pt_prev"] = self.behav_pt_prev(prev_bhvs[:, 0], groups)
        if self.behav_pt is not None:
            parts["behav_pt"] = self.behav_pt(bhv, groups)
        return [parts[name] for name in self.zero_widths]

    def _predict(
        self,
        grids: Sequence[Tensor],
        cls: Tensor,
        shared: Tensor,
        subject: str,
        voxels: Tensor,
        layer_weights: Tensor | None,
    ) -> Tensor:
        """One subject's predictions [B_s, n] from its samples' features, CHUNK_SIZE voxels at a time."""
        mu = None if self.retina_mapper is None else self.retina_mapper[subject](voxels)
        chunks = []
        for start in range(0, len(voxels), self.chunk_size):
            part = slice(start, start + self.chunk_size)
            m = None if mu is None else mu[part]
            w = None if layer_weights is None else layer_weights[part]
            x0 = retina_features(grids, cls, m, w, len(voxels[part]))
            chunks.append(apply_readout(x0, shared, *self.readout[subject](voxels[part])))
        return torch.cat(chunks, dim=1) if chunks else cls.new_zeros(cls.shape[0], 0)

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """What a checkpoint stores: the parameters that train, nothing else.

        Everything else is rebuilt by the constructor: frozen ViT weights and a frozen topyneck
        from their files, coordinates from SubjectInfo; the model has no persistent buffers.
        """
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(
        self, state: Mapping[str, Tensor], strict: bool = True
    ) -> tuple[list[str], list[str]]:
        """Load a :meth:`trainable_state_dict`; returns (missing, unexpected) trainable keys.

        With ``strict`` any missing or unexpected key raises before anything is loaded;
        otherwise the matching keys are loaded.
        """
        expected = self.trainable_state_dict().keys()
        missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
        if strict and (missing or unexpected):
            raise RuntimeError(f"trainable state does not match the model: missing {missing}, unexpected {unexpected}")
        self.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
        return missing, unexpected

    def _topyneck_groups(self) -> list[str]:
        """The topyneck groups this model has (an ablation may leave one out)."""
        return [group for group in TOPYNECK_GROUPS if getattr(self, group) is not None]

    def topyneck_state_dict(self) -> dict[str, Tensor]:
        """The RetinaMapper and LayerSelector weights of every subject, as a topyneck file holds them."""
        return {k: v for k, v in self.state_dict().items() if k.split(".", 1)[0] in TOPYNECK_GROUPS}

    def freeze_topyneck(self) -> None:
        """Stop training every subject's RetinaMapper and LayerSelector (their outputs get cached)."""
        for group in self._topyneck_groups():
            getattr(self, group).requires_grad_(False)

    def load_topyneck(self, state: Mapping[str, Tensor], source: str = "topyneck state") -> None:
        """Load and freeze the RetinaMapper and LayerSelector of every subject of this model.

        Keys of other subjects and other modules (and of a module an ablation left out) are
        ignored; a subject of this model that ``state`` lacks is an error naming ``source`` (the
        file) and the subject.
        """
        parts = {}
        for group in self._topyneck_groups():
            for subject in getattr(self, group):
                prefix = f"{group}.{subject}."
                part = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
                if not part:
                    present = sorted({k.split(".")[1] for k in state if k.startswith(f"{group}.")})
                    raise ValueError(f"{source}: no {group} weights for subject {subject} (it has {present})")
                parts[group, subject] = part
        for (group, subject), part in parts.items():
            try:
                getattr(self, group)[subject].load_state_dict(part)
            except RuntimeError as error:
                raise ValueError(f"{source}: {group}.{subject} does not fit this model: {error}") from None
        self.freeze_topyneck()
