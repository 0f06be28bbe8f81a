"""Multi-task network architectures: hard sharing, cross-stitch, MMoE, CGC, PLE and DSelect-k.

Every architecture is built from a task pair's own trunk (``make_trunk()`` builds a fresh one)
and heads, and presents the interface the training step uses (:class:`MultiTaskNet`):
``forward`` gives representations, head inputs and outputs; ``shared_parameters`` are the
parameters that gradient strategies with source ``shared`` manipulate; ``head_parameters`` are
the task-specific ones (each receives only its own task's gradient); ``last_shared_parameters``
are GradNorm's "last shared layer".

Hard sharing feeds one representation to every head. The other five give each task its own
representation (a gated mixture of experts, or its own column of a cross-stitch network), so a
gradient "at the shared representation" (source ``rep``) does not exist for them: they set
``has_shared_representation = False`` and :func:`check_gradient_source` refuses such runs.
Their trunk's ``per_task(x)`` gives the list of task representations, its ``forward`` stacks
them into a ``(batch, tasks, width)`` tensor and head i reads slice i
(:class:`TaskSlice`), so ``heads[i](trunk(x))`` is task i's output as for hard sharing.

An architecture is named by a spec string, ``NAME[:key=value,...]`` (``mmoe:experts=6``,
``dselect-k:experts=8,k=2``), whose keys and defaults are in :data:`ARCHITECTURE_PARAMS`.
:func:`canonical_architecture` rewrites a spec in one canonical form (keys sorted, values parsed
and printed again, keys at their default dropped: ``mmoe:experts=3`` is ``mmoe``), which is the
form a run's configuration holds, so equal architectures make one setting.

Shared versus task-specific parameters are not declared by hand: a parameter is shared when
the representations of two or more tasks depend on it in the autograd graph of one forward
pass (:func:`split_by_dependence`), task-specific when exactly one does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from mtl_bench.architecture_spec import (  # noqa: F401  (re-exported)
    ARCHITECTURE_PARAMS,
    ARCHITECTURES,
    CGC_SHARED_EXPERTS,
    CGC_TASK_EXPERTS,
    CROSS_STITCH_SELF,
    DSELECT_EXPERTS,
    DSELECT_GAMMA,
    DSELECT_K,
    MMOE_EXPERTS,
    PER_TASK,
    SHARED_REPRESENTATION,
    ArchParam,
    architecture_name,
    architectures_help,
    canonical_architecture,
    check_gradient_source,
    parse_architecture,
    rep_refusal,
)
from mtl_bench.errors import UserError


class MultiTaskNet(nn.Module):
    """A trunk shared by every task plus one head per task (hard sharing).

    ``forward`` returns the representations (one per distinct input), what each head read (one
    per task) and one output per task. With ``detach_rep`` each head reads its own detached leaf
    of the representation, so the harness can take every task's gradient at the representation
    in one backward pass and back-propagate a combined gradient into the trunk once.
    """

    #: Whether every head reads the same representation (gradient source ``rep`` needs it).
    has_shared_representation = True

    def __init__(self, trunk: nn.Module, heads: Sequence[nn.Module]):
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleList(heads)

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.trunk.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.heads.parameters() if p.requires_grad]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the last trunk module that has any (GradNorm's 'last shared layer')."""
        return last_parameters(self.trunk)

    def forward(self, inputs: Sequence[Tensor], detach_rep: bool = False):
        reps = [self.trunk(x) for x in inputs]
        shared = len(inputs) == 1
        source = [reps[0 if shared else i] for i in range(len(self.heads))]
        # With detach_rep every head reads its own detached leaf (same storage): one backward
        # pass of the summed losses then leaves task i's gradient at the representation in
        # leaf i, instead of one backward pass per task.
        head_in = [r.detach().requires_grad_(True) for r in source] if detach_rep else source
        outputs = [head(x) for head, x in zip(self.heads, head_in)]
        return reps, head_in, outputs


def last_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters of the last submodule of ``module`` that owns any."""
    last: list[nn.Parameter] = []
    for sub in module.modules():
        own = [p for p in sub.parameters(recurse=False) if p.requires_grad]
        if own:
            last = own
    return last


class TaskSlice(nn.Module):
    """Head of task ``index`` on a trunk that returns one representation per task."""

    def __init__(self, index: int, head: nn.Module):
        super().__init__()
        self.index = index
        self.head = head

    def forward(self, rep: Tensor) -> Tensor:
        return self.head(rep[:, self.index])


class PerTaskNet(MultiTaskNet):
    """A trunk that gives each task its own representation, plus one head per task.

    ``shared_parameters``: trunk parameters that two or more tasks depend on (experts mixed by
    several gates, every column of a cross-stitch network). ``head_parameters``: the heads plus
    the trunk parameters of one task only (its gates, its own experts). Together they hold every
    parameter once. ``last_shared_parameters``: the trunk's own choice (the last layer of every
    shared expert or column).
    """

    has_shared_representation = False

    def __init__(self, name: str, trunk: nn.Module, heads: Sequence[nn.Module],
                 n_features: int):
        super().__init__(trunk, [TaskSlice(i, h) for i, h in enumerate(heads)])
        self.architecture = name
        # names, not objects: they survive copies of the model
        self._shared_names, self._task_names = split_by_dependence(trunk, n_features,
                                                                   len(heads))

    def _by_names(self, names: Sequence[str]) -> list[nn.Parameter]:
        params = dict(self.trunk.named_parameters())
        return [params[n] for n in names if params[n].requires_grad]

    def shared_parameters(self) -> list[nn.Parameter]:
        return self._by_names(self._shared_names)

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """Trunk parameters only task ``task`` depends on, then its head's."""
        return (self._by_names(self._task_names[task])
                + [p for p in self.heads[task].parameters() if p.requires_grad])

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for t in range(len(self.heads)) for p in self.task_parameters(t)]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.trunk.last_shared_parameters() if p.requires_grad]

    def forward(self, inputs: Sequence[Tensor], detach_rep: bool = False):
        if detach_rep:
            raise UserError(rep_refusal("this strategy", self.architecture))
        reps = [self.trunk(x) for x in inputs]
        shared = len(inputs) == 1
        head_in = [reps[0 if shared else i] for i in range(len(self.heads))]
        outputs = [head(x) for head, x in zip(self.heads, head_in)]
        return reps, head_in, outputs


def split_by_dependence(trunk: nn.Module, n_features: int, n_tasks: int
                        ) -> tuple[list[str], list[list[str]]]:
    """Names of the (shared, per-task) trunk parameters, from the autograd graph of one forward
    pass on a dummy batch: task t depends on a parameter when the gradient of its
    representation (``trunk.per_task``, before stacking) with respect to it exists
    (``allow_unused`` gives None otherwise, whatever the values)."""
    named = [(n, p) for n, p in trunk.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    with torch.enable_grad():
        reps = trunk.per_task(torch.zeros(2, n_features))
        users: list[set[int]] = [set() for _ in params]
        for t in range(n_tasks):
            grads = torch.autograd.grad(reps[t].sum(), params, retain_graph=True,
                                        allow_unused=True)
            for k, g in enumerate(grads):
                if g is not None:
                    users[k].add(t)
    # with one task (a single-task baseline) the trunk counts as shared, as under hard sharing
    shared = [n for (n, _), u in zip(named, users) if len(u) != 1 or n_tasks == 1]
    own = [[n for (n, _), u in zip(named, users) if u == {t} and n_tasks > 1]
           for t in range(n_tasks)]
    return shared, own


# -- building blocks ---------------------------------------------------------------------------
def trunk_stages(trunk: nn.Module) -> list[nn.Module]:
    """A trunk cut into consecutive stages (one learned layer and what follows it): the trunk's
    own ``stages()`` when it has one, a ``Sequential`` cut before each module with parameters,
    otherwise the whole trunk as one stage."""
    if hasattr(trunk, "stages"):
        return list(trunk.stages())
    if not isinstance(trunk, nn.Sequential):
        return [trunk]
    groups: list[list[nn.Module]] = []
    for module in trunk:
        if not groups or any(True for _ in module.parameters()):
            groups.append([])
        groups[-1].append(module)
    return [g[0] if len(g) == 1 else nn.Sequential(*g) for g in groups]


def mix(weights: Tensor, experts: Tensor) -> Tensor:
    """sum_e weights[b, e] * experts[b, e, ...] for expert outputs of any shape."""
    w = weights.view(*weights.shape, *([1] * (experts.dim() - 2)))
    return (w * experts).sum(dim=1)


class SoftmaxGate(nn.Module):
    """Per-example softmax weights over ``n`` experts from a linear map of the (flat) input."""

    def __init__(self, in_features: int, n: int):
        super().__init__()
        self.linear = nn.Linear(in_features, n)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.linear(x.flatten(1)), dim=-1)


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """0 below -gamma/2, 1 above gamma/2, the cubic -2/gamma^3 t^3 + 3/(2 gamma) t + 1/2
    between (continuously differentiable; exact zeros and ones outside)."""
    cubic = -2.0 / gamma**3 * t**3 + 1.5 / gamma * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t),
                       torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


class DSelectKGate(nn.Module):
    """DSelect-k gate (Hazimeh et al., NeurIPS 2021): weights over ``n`` experts with at most
    ``k`` non-zero, learned by gradient descent.

    Each of ``k`` selectors maps the input to m = ceil(log2 n) numbers z; smooth-stepped, they
    are the "bits" of a soft binary code, and the product over bits gives a distribution over
    the 2^m codes (one-hot once every bit has saturated at 0 or 1). A softmax over ``k`` more
    numbers mixes the selectors. Codes beyond ``n`` (n not a power of two) are dropped and the
    weights renormalised. Selector weights start in [-gamma/100, gamma/100], so every bit starts
    undecided. The paper's entropy regulariser (which speeds up saturation) is not used.
    """

    def __init__(self, in_features: int, n: int, k: int = DSELECT_K,
                 gamma: float = DSELECT_GAMMA):
        super().__init__()
        if n < 2 or k < 1:
            raise ValueError("DSelect-k needs at least two experts and k >= 1")
        self.n, self.k, self.gamma = n, k, gamma
        self.bits = max(1, math.ceil(math.log2(n)))
        self.selectors = nn.Linear(in_features, k * self.bits)
        self.mixer = nn.Linear(in_features, k)
        nn.init.uniform_(self.selectors.weight, -gamma / 100, gamma / 100)
        nn.init.uniform_(self.selectors.bias, -gamma / 100, gamma / 100)
        codes = torch.arange(2**self.bits)[:, None] >> torch.arange(self.bits)[None, :] & 1
        self.register_buffer("codes", codes.float(), persistent=False)  # (2^m, m)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        s = smooth_step(self.selectors(x), self.gamma).view(-1, self.k, 1, self.bits)
        # product over bits of s or 1 - s, as the code's bit says: (batch, k, 2^m)
        choice = (self.codes * s + (1 - self.codes) * (1 - s)).prod(dim=-1)
        weights = (torch.softmax(self.mixer(x), dim=-1)[..., None] * choice).sum(dim=1)
        weights = weights[:, :self.n]
        return weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-12)


class MixtureTrunk(nn.Module):
    """One gated level of experts: MMoE (all experts shared, one gate per task), CGC (shared
    plus task-specific experts, one gate per task over the shared and its own experts) and
    DSelect-k (MMoE with DSelect-k gates). Returns (batch, tasks, width)."""

    def __init__(self, make_expert: Callable[[], nn.Module], in_features: int, n_tasks: int,
                 n_shared: int, n_own: int = 0,
                 make_gate: Callable[[int, int], nn.Module] = SoftmaxGate):
        super().__init__()
        self.shared = nn.ModuleList(make_expert() for _ in range(n_shared))
        self.own = nn.ModuleList(nn.ModuleList(make_expert() for _ in range(n_own))
                                 for _ in range(n_tasks))
        self.gates = nn.ModuleList(make_gate(in_features, n_shared + n_own)
                                   for _ in range(n_tasks))

    def per_task(self, x: Tensor) -> list[Tensor]:
        shared = [e(x) for e in self.shared]
        reps = []
        for own, gate in zip(self.own, self.gates):
            experts = torch.stack([*shared, *(e(x) for e in own)], dim=1)
            reps.append(mix(gate(x), experts))
        return reps

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack(self.per_task(x), dim=1)

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return [p for e in self.shared for p in last_parameters(e)]


class PLETrunk(nn.Module):
    """Progressive layered extraction (Tang et al., RecSys 2020): CGC levels stacked, one level
    per stage of the pair's trunk (:func:`trunk_stages`). At every level but the last, a shared
    gate mixes all experts (shared and every task's) into the input of the next level's shared
    experts; task t's gate mixes the shared and task t's experts into the input of the next
    level's task t experts (or into task t's representation after the last level)."""

    def __init__(self, make_trunk: Callable[[], nn.Module], n_features: int, n_tasks: int,
                 n_shared: int = CGC_SHARED_EXPERTS, n_own: int = CGC_TASK_EXPERTS):
        super().__init__()
        stages = [trunk_stages(make_trunk()) for _ in range(n_shared + n_tasks * n_own)]
        levels = len(stages[0])
        self.n_tasks, self.n_shared, self.n_own = n_tasks, n_shared, n_own
        self.shared = nn.ModuleList()
        self.own = nn.ModuleList()
        self.task_gates = nn.ModuleList()
        self.shared_gates = nn.ModuleList()
        probe = torch.zeros(2, n_features)
        for level in range(levels):
            experts = [s[level] for s in stages]
            self.shared.append(nn.ModuleList(experts[:n_shared]))
            self.own.append(nn.ModuleList(
                nn.ModuleList(experts[n_shared + t * n_own:n_shared + (t + 1) * n_own])
                for t in range(n_tasks)))
            width = probe.flatten(1).shape[1]
            self.task_gates.append(nn.ModuleList(SoftmaxGate(width, n_shared + n_own)
                                                 for _ in range(n_tasks)))
            if level < levels - 1:
                self.shared_gates.append(SoftmaxGate(width, n_shared + n_tasks * n_own))
            with torch.no_grad():
                probe = experts[0](probe)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack(self.per_task(x), dim=1)

    def per_task(self, x: Tensor) -> list[Tensor]:
        levels = len(self.shared)
        shared_in, task_in = x, [x] * self.n_tasks
        for level in range(levels):
            shared = [e(shared_in) for e in self.shared[level]]
            own = [[e(task_in[t]) for e in self.own[level][t]] for t in range(self.n_tasks)]
            next_task = [mix(self.task_gates[level][t](task_in[t]),
                             torch.stack([*shared, *own[t]], dim=1))
                         for t in range(self.n_tasks)]
            if level < levels - 1:
                everyone = torch.stack([*shared, *(e for o in own for e in o)], dim=1)
                shared_in = mix(self.shared_gates[level](shared_in), everyone)
            task_in = next_task
        return task_in

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return [p for e in self.shared[-1] for p in last_parameters(e)]


class CrossStitchTrunk(nn.Module):
    """Cross-stitch networks (Misra et al., CVPR 2016): one copy of the pair's trunk per task
    (a column), and after each stage (:func:`trunk_stages`) a learned T x T unit that replaces
    column t's activation by sum_s alpha[t, s] x_s. Units start at ``self_weight`` on the
    diagonal and share the rest evenly (rows sum to one)."""

    def __init__(self, make_trunk: Callable[[], nn.Module], n_tasks: int,
                 self_weight: float = CROSS_STITCH_SELF):
        super().__init__()
        columns = [trunk_stages(make_trunk()) for _ in range(n_tasks)]
        self.columns = nn.ModuleList(nn.ModuleList(c) for c in columns)
        other = (1 - self_weight) / max(1, n_tasks - 1)
        start = torch.full((n_tasks, n_tasks), other)
        start.fill_diagonal_(self_weight if n_tasks > 1 else 1.0)
        self.units = nn.ParameterList(nn.Parameter(start.clone()) for _ in columns[0])

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack(self.per_task(x), dim=1)

    def per_task(self, x: Tensor) -> list[Tensor]:
        xs = [x] * len(self.columns)
        for level, unit in enumerate(self.units):
            out = torch.stack([col[level](xi) for col, xi in zip(self.columns, xs)], dim=1)
            mixed = torch.einsum("ts,bs...->bt...", unit, out)
            xs = list(mixed.unbind(dim=1))
        return xs

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last learned layer of every column (all tasks depend on each)."""
        return [p for col in self.columns for p in last_parameters(col[-1])]


def build_per_task(spec: str, make_trunk: Callable[[], nn.Module],
                   heads: Sequence[nn.Module], n_features: int) -> PerTaskNet:
    """The per-task-representation architecture ``spec`` (one of :data:`PER_TASK`, with its
    keys: :data:`ARCHITECTURE_PARAMS`)."""
    name, v = parse_architecture(spec)
    n = len(heads)
    if name == "mmoe":
        trunk: nn.Module = MixtureTrunk(make_trunk, n_features, n, v["experts"])
    elif name == "cgc":
        trunk = MixtureTrunk(make_trunk, n_features, n, v["shared_experts"], v["task_experts"])
    elif name == "dselect-k":
        trunk = MixtureTrunk(make_trunk, n_features, n, v["experts"],
                             make_gate=lambda d, e: DSelectKGate(d, e, v["k"], v["gamma"]))
    elif name == "ple":
        trunk = PLETrunk(make_trunk, n_features, n, v["shared_experts"], v["task_experts"])
    elif name == "cross-stitch":
        trunk = CrossStitchTrunk(make_trunk, n, v["self"])
    else:
        raise UserError(f"architecture '{name}' gives every task one shared representation; "
                        "choose from: " + ", ".join(PER_TASK))
    return PerTaskNet(canonical_architecture(spec), trunk, heads, n_features)
