"""DeepCluster-v2 (Caron et al., NeurIPS 2020, in the SwAV paper §3 / App. B): at every epoch
start, spherical k-means over a memory bank of the whole dataset's projections (several
clusterings); the prototypes are set to the centroids and each crop predicts its image's cluster
by cross-entropy; multi-crop. Follows facebookresearch/swav ``main_deepclusterv2.py``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.distributed import gather_no_grad
from sslbench.methods.base import EpochData, Method, StepContext, StepOutput, forward_views
from sslbench.methods.heads import mlp
from sslbench.methods.losses import fp32_matmul
from sslbench.methods.multicrop import count_global
from sslbench.methods.registry import register_method

#: rows of the bank scored against the centroids at once (bounds k-means' memory to
#: ``_CHUNK x K`` floats: 0.8 GB at K = 3000).
_CHUNK = 65_536


def _chunks(n: int, size: int = _CHUNK) -> Iterator[slice]:
    return (slice(i, min(i + size, n)) for i in range(0, n, size))


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``argmax_k <x_i, c_k>``: the E-step of spherical k-means (ties: the lowest k), computed
    in chunks of rows.

    Shape:
        x: (N, D); centroids: (K, D); return: (N,) int64.
    """
    return torch.cat([(x[rows] @ centroids.T).argmax(dim=1) for rows in _chunks(x.shape[0])])


@torch.no_grad()
def spherical_kmeans(x: torch.Tensor, k: int, iterations: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical (cosine) k-means, as the official ``cluster_memory``.

    Start from k distinct rows of ``x`` drawn by ``generator`` (``randperm(N)[:k]``); then
    ``iterations`` times: assign each row to its nearest centroid by dot product (E), set each
    non-empty centroid to the L2-normalised mean of its rows (M; an empty cluster keeps its
    centroid); a last E-step gives the assignments. Cluster sums are one-hot matmuls (in chunks,
    deterministic on GPU, unlike ``index_add_``), so a resumed run re-clusters bit-exactly.

    The official code asserts ``k <= N``; here the ``k - N`` extra starting centroids repeat
    drawn rows, stay empty (ties go to the lowest index) and keep their value, so a 16-image
    smoke test runs with any K.

    Args:
        x: L2-normalised rows (the memory bank).
        k: number of clusters.
        iterations: M-steps (the official ``nmb_kmeans_iters``, 10).
        generator: draws the starting centroids (a CPU generator).

    Shape:
        x: (N, D); returns centroids (k, D) with unit rows and assignments (N,) int64 in [0, k).
    """
    n = x.shape[0]
    if n < 1 or k < 1 or iterations < 0:
        raise ValueError(f"need N >= 1 rows, k >= 1 and iterations >= 0, got {n}, {k}, {iterations}")
    with torch.autocast(x.device.type, enabled=False):  # full precision under the engine's autocast
        return _kmeans(x, k, iterations, generator)


def _kmeans(x: torch.Tensor, k: int, iterations: int,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[0]
    start = torch.randperm(n, generator=generator)[:k]
    if k > n:
        start = torch.cat((start, torch.randint(0, n, (k - n,), generator=generator)))
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    centroids = x[start.to(x.device)]
    for it in range(iterations + 1):
        assign = nearest_centroid(x, centroids)
        if it == iterations:
            break
        sums = torch.zeros_like(centroids)
        for rows in _chunks(n):
            sums += F.one_hot(assign[rows], k).to(x.dtype).T @ x[rows]
        counts = torch.bincount(assign, minlength=k)
        full = counts > 0
        centroids[full] = F.normalize(sums[full] / counts[full, None], dim=1)
    return centroids, assign


def prototype_scores(z: list[torch.Tensor], prototypes: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """``scores[h][v] = z_v C_h^T``: each view's projections against each clustering's centroids,
    in float32 with autocast off (the loss divides them by tau = 0.1, which bf16 cannot take).

    Shape:
        z: V tensors (B, D); prototypes: H tensors (K_h, D); return: H lists of V tensors (B, K_h).
    """
    return [[fp32_matmul(v, c.T) for v in z] for c in prototypes]


def deepclusterv2_loss(scores: list[list[torch.Tensor]], targets: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """DeepCluster-v2's loss: each crop's prototype scores predict its image's cluster.

    ``L = 1/H sum_h 1/(V B) sum_{v, b} -log softmax(s_{h,v,b} / tau)[a_h(b)]``, with
    ``s_{h,v,b} = C_h z_{v,b}`` the cosines of crop v of image b to the H clusterings' centroids
    and ``a_h(b)`` the image's cluster in clustering h (the official ``train``: cross-entropy over
    all crops of the batch per clustering, averaged over clusterings).

    Args:
        scores: ``scores[h][v]``, the scores of view v against clustering h's prototypes.
        targets: ``targets[h, b]``, image b's cluster in clustering h.
        temperature: tau (0.1).

    Shape:
        scores: H lists of V tensors (B, K_h); targets: (H, B) int64; return: ().
    """
    if len(scores) != targets.shape[0]:
        raise ValueError(f"{len(scores)} clusterings of scores but {targets.shape[0]} of targets")
    losses = [F.cross_entropy(torch.cat(views) / temperature, targets[h].repeat(len(views)))
              for h, views in enumerate(scores)]
    return torch.stack(losses).mean()


@dataclass(frozen=True)
class DeepClusterV2Config:
    """DeepCluster-v2 hyperparameters (defaults: facebookresearch/swav
    ``scripts/deepclusterv2_800ep_pretrain.sh`` and ``main_deepclusterv2.py``).

    Attributes:
        proj_hidden_dim: projector hidden width (2048, ``hidden_mlp`` of src/resnet50.py).
        proj_dim: projection (and centroid) dimension (128, ``--feat_dim``).
        num_prototypes: K of each clustering (3000, 3000, 3000, ``--nmb_prototypes``).
        temperature: softmax tau (0.1, ``--temperature``).
        kmeans_iters: k-means M-steps per clustering and epoch (10, ``cluster_memory``'s
            ``nmb_kmeans_iters``).
        num_assign_crops: the leading global crops kept in the memory bank, one bank each;
            clustering h clusters bank ``h % num_assign_crops`` (2, ``--crops_for_assign 0 1``).
        memory_batch_size: batch of the pass that fills the bank before epoch 0 (64: the official
            ``init_memory`` runs the training loader, ``--batch_size 64`` per GPU).
    """

    proj_hidden_dim: int = 2048
    proj_dim: int = 128
    num_prototypes: tuple[int, ...] = (3000, 3000, 3000)
    temperature: float = 0.1
    kmeans_iters: int = 10
    num_assign_crops: int = 2
    memory_batch_size: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_prototypes", tuple(self.num_prototypes))  # a list from JSON
        if not self.num_prototypes or min(self.num_prototypes) < 1:
            raise ValueError(f"num_prototypes needs one K >= 1 per clustering, got {self.num_prototypes}")
        if min(self.proj_hidden_dim, self.proj_dim, self.num_assign_crops, self.memory_batch_size) < 1:
            raise ValueError("proj_hidden_dim, proj_dim, num_assign_crops, memory_batch_size must be >= 1")
        if self.temperature <= 0 or self.kmeans_iters < 0:
            raise ValueError(f"need temperature > 0 and kmeans_iters >= 0, got {self.temperature}, "
                             f"{self.kmeans_iters}")


def _no_single_tail(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches, a last batch of one image merged into the one before (batch norm in training
    mode needs two)."""
    held: tuple[torch.Tensor, torch.Tensor] | None = None
    for images, indices in batches:
        if held is not None and images.shape[0] == 1:
            held = (torch.cat((held[0], images)), torch.cat((held[1], indices)))
            continue
        if held is not None:
            yield held
        held = (images, indices)
    if held is not None:
        yield held


@register_method(
    "deepclusterv2", config=DeepClusterV2Config, family="clustering, k-means pseudo-labels",
    paper="Caron et al., Unsupervised Learning of Visual Features by Contrasting Cluster "
          "Assignments (DeepCluster-v2, §3 and App. B), NeurIPS 2020, https://arxiv.org/abs/2006.09882",
    default_recipe="deepclusterv2-quick", needs_num_samples=True,
)
class DeepClusterV2(Method):
    """Encoder -> projector -> L2-normalise -> H prototype heads (the k-means centroids).

    State (buffers, so a checkpoint resumes exactly): the memory bank of every training image's
    projection per assign crop, written by dataset index in :meth:`on_step_end`; the prototypes
    ``prototypes{h}`` and ``assignments`` (H, N) set by :meth:`on_epoch_start`.

    The prototypes are buffers, never trained: the official script freezes their gradient for
    ``--freeze_prototypes_niters 300000`` iterations (default 1e10), more than the 250,400 of
    800 epochs at batch 4096, and re-sets them to the centroids every epoch (solo-learn sets
    ``requires_grad = False``).

    Deviations from the official code: the bank is indexed by dataset position (official: by
    loader position, plus an index array; the same rows, except that an image dropped by
    ``drop_last`` keeps its last projection instead of being unassigned for an epoch); every rank
    holds the whole bank and runs the same k-means (official: shards and all-reduced sums); the
    pass before epoch 0 projects the un-augmented images at the training size into every bank
    (official ``init_memory``: the loader's augmented crops 0 and 1); k-means draws are seeded.
    """

    bank: torch.Tensor  # (num_assign_crops, N, proj_dim) float32
    bank_ready: torch.Tensor  # () bool: the bank holds a projection of every image
    assignments: torch.Tensor  # (H, N) int64, -1 before the first clustering

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: DeepClusterV2Config, *,
                 num_samples: int = 0) -> None:
        super().__init__(encoder, feature_dim)
        if num_samples < 1:
            raise ValueError(f"DeepCluster-v2 keeps a memory bank of every training image and needs "
                             f"the training split's size as num_samples, got {num_samples}")
        self.cfg = cfg
        self.num_samples = num_samples
        self.projector = mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        for h, k in enumerate(cfg.num_prototypes):  # random unit rows until the first clustering
            self.register_buffer(f"prototypes{h}", F.normalize(torch.randn(k, cfg.proj_dim), dim=1))
        self.register_buffer("bank", torch.zeros(cfg.num_assign_crops, num_samples, cfg.proj_dim))
        self.register_buffer("bank_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("assignments", torch.full((len(cfg.num_prototypes), num_samples), -1,
                                                       dtype=torch.long))

    def prototypes(self) -> list[torch.Tensor]:
        """The H centroid matrices, (K_h, proj_dim) each."""
        return [getattr(self, f"prototypes{h}") for h in range(len(self.cfg.num_prototypes))]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> L2-normalised projections, shape (B, proj_dim)."""
        return F.normalize(self.projector(self.encoder(x)), dim=1)

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        if ctx.indices is None:
            raise ValueError("DeepCluster-v2 needs the batch's dataset indices (StepContext.indices)")
        num_global, a = count_global(views), self.cfg.num_assign_crops
        if num_global < a:
            raise ValueError(f"DeepCluster-v2 banks {a} global crops; the augmentation gives {num_global}")
        idx = ctx.indices.to(device=views[0].device, dtype=torch.long)
        z = forward_views(self.project, views)
        scores = prototype_scores(z, self.prototypes())
        targets = self.assignments[:, idx]
        # The engine clusters before every epoch (every image assigned): a caller skipped it.
        # Read from a Python-side copy (once per build or load), not from the device every step.
        if not self.host_value("assigned", lambda: not bool((self.assignments < 0).any())):
            raise RuntimeError("DeepCluster-v2 has no cluster assignment for some images of this batch: "
                               "on_epoch_start (the k-means over the memory bank) must run before the "
                               "epoch's first step.")
        loss = deepclusterv2_loss(scores, targets, self.cfg.temperature)
        return StepOutput(loss=loss, state={"indices": idx, "z": torch.stack(z[:a]).detach()})

    @torch.no_grad()
    def on_step_end(self, out: StepOutput, ctx: StepContext) -> dict[str, float]:
        # The official loop writes the forward's (pre-step) projections after the optimiser step;
        # every rank writes the global batch, so the banks (and clusterings) stay identical.
        idx = gather_no_grad(out.state["indices"])
        z = gather_no_grad(out.state["z"].transpose(0, 1)).transpose(0, 1)  # (A, W * B, D)
        self.bank[:, idx] = z.to(self.bank.dtype)
        return {}

    @torch.no_grad()
    def fill_bank(self, data: EpochData) -> None:
        """One pass over the training split (the official ``init_memory``), every assign crop's
        bank set to the image's projection. Batch norm in training mode, as the official model
        is at that point; the mode is restored after."""
        was_training = self.training
        self.train()
        for images, indices in _no_single_tail(data.batches(self.cfg.memory_batch_size)):
            self.bank[:, indices.to(self.bank.device)] = self.project(images).to(self.bank.dtype)
        self.train(was_training)
        self.bank_ready.fill_(True)

    @torch.no_grad()
    def on_epoch_start(self, ctx: StepContext, data: EpochData) -> dict[str, float]:
        """k-means of the bank for each clustering: prototypes <- centroids, assignments stored.

        Clustering h of epoch e starts from a draw seeded by ``(seed, e, h)``, so a resumed run
        re-clusters exactly (the official ``randperm`` is unseeded)."""
        if not bool(self.bank_ready):
            self.fill_bank(data)
        first = dataclasses.replace(ctx, step=ctx.epoch * ctx.steps_per_epoch, indices=None)
        used = []
        for h, (k, protos) in enumerate(zip(self.cfg.num_prototypes, self.prototypes())):
            centroids, assign = spherical_kmeans(self.bank[h % self.cfg.num_assign_crops], k,
                                                 self.cfg.kmeans_iters, first.generator("cpu", stream=h))
            protos.copy_(centroids)
            self.assignments[h].copy_(assign)
            used.append(torch.unique(assign).numel() / k)
        self.set_host_value("assigned", True)  # k-means assigns every row of the bank
        return {"kmeans_used_clusters": sum(used) / len(used)}
