"""The stacked model: J models of one architecture as one model with a leading job axis.

Runs packed together (:mod:`precond.sweep.pack_training`) train, evaluate and measure their
curvature (:mod:`precond.sweep.pack_curvature`) through it. Stacking the parameters along a job
axis, ``P = [p_1; …; p_J]``, and giving each job its own inputs makes the objective separable:
``F(P) = Σ_j f_j(p_j)`` (:func:`job_losses` gives the ``f_j``), so one backward pass of ``Σ_j f_j``
gives every job's own gradient, and one double backward every job's own Hessian-vector product.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

#: modules the explicit batched forward handles; any other model is batched with vmap
_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.GELU, nn.Identity)
_BATCHED = (nn.Flatten, nn.Linear, nn.LayerNorm, nn.BatchNorm1d, nn.Conv2d, nn.BatchNorm2d, nn.GroupNorm,
            nn.MaxPool2d, nn.AdaptiveAvgPool2d, *_ELEMENTWISE)


def _batchable_layers(model: nn.Module) -> Optional[list[tuple[str, nn.Module]]]:
    """The layers of a Sequential that the explicit batched path handles (linear models, MLPs and
    plain CNNs, with any of precond's normalizations), else None."""
    if not isinstance(model, nn.Sequential):
        return None
    layers = list(model.named_children())
    for _, layer in layers:
        if not isinstance(layer, _BATCHED):
            return None
        if isinstance(layer, nn.Flatten) and (layer.start_dim, layer.end_dim) != (1, -1):
            return None
        if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or layer.padding_mode != "zeros"):
            return None
    return layers


def packable(model: nn.Module) -> Optional[str]:
    """Why this model cannot be trained in a pack, or None. A model with buffers (BatchNorm's running
    statistics) or BNP needs the explicit batched path: vmap cannot update a buffer in place."""
    if _batchable_layers(model) is None and any(True for _ in model.buffers()):
        return f"{type(model).__name__} with buffers (BatchNorm) is not a Sequential the pack can batch"
    return None


def stacked_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``x_j W_jᵀ + b_j`` for every job ``j``: ``x`` ``[J, B, I]``, ``weight`` ``[J, O, I]``, ``bias`` ``[J, O]``.

    Two forms of one product, chosen by what their backward copies. ``bmm(x, Wᵀ)`` gives ``∂W`` as the
    transpose of a ``[J, I, O]`` product, which autograd copies into ``W``'s layout: ``J·O·I`` numbers every
    step. ``(W xᵀ)ᵀ`` gives ``∂W`` in ``W``'s layout and leaves the output (and the gradient of ``x``)
    strided, which costs about ``J·B·(I + O)`` numbers copied downstream. The second wins when the batch is
    small against the layer (the first layer of an MNIST MLP at batch 32: forward and backward of 48 jobs
    7.9 → 3.2 ms on one thread), the first otherwise (hidden 64 → 64 at batch 128: 2.2 against 3.9 ms).
    """
    batch, fan_in = x.shape[1], x.shape[2]
    fan_out = weight.shape[1]
    if batch * (fan_in + fan_out) < fan_out * fan_in:
        product = torch.bmm(weight, x.mT) if bias is None else torch.baddbmm(bias.unsqueeze(2), weight, x.mT)
        return product.mT
    return torch.bmm(x, weight.mT) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, weight.mT)


class StackedModel:
    """J models of one architecture as stacked parameters ``[J, …]`` (leaves the optimizer steps).

    ``forward`` maps per-job inputs ``[J, B, …]`` to ``[J, B, …]`` outputs; ``forward_shared``
    maps one input ``[N, …]`` through every job (evaluation on a common split). A Sequential of
    the layers precond's linear models, MLPs and CNNs are made of runs explicitly batched:

    * dense layers as batched matrix products, ``Y_j = X_j W_jᵀ + b_j`` in one ``baddbmm``;
    * convolutional layers with the job axis folded into the channels, ``[B, J·C, H, W]``: a
      convolution with ``groups=J`` applies job j's kernels to job j's channels only;
    * BatchNorm on the folded layout, ``[B, J·F]`` or ``[B, J·C, H, W]``: each channel ``(j, c)``
      is normalized with the statistics of job j's own batch, and its running statistics (the
      stacked buffers ``[J, C]``, viewed flat) are job j's own; GroupNorm(1, C) (LayerNorm of a
      feature map) is ``group_norm`` with J groups, one per job.

    Any other architecture runs as ``vmap(functional_call)`` over the job axis (no buffers).
    With ``record_moments`` on, every training forward stores each dense and convolutional
    layer's input moments per job (``mean(h)``, ``mean(h²)`` over the batch and positions, the
    statistics BNP keeps) in :attr:`moments`.
    """

    def __init__(self, models: list[nn.Module], record_moments: bool = False):
        params, self.buffers = stack_module_state(models)
        self.names = list(params)
        self.params: list[Tensor] = list(params.values())
        self.base = copy.deepcopy(models[0]).to("meta")  # the architecture only; weights come from self.params
        self.layers = _batchable_layers(self.base)
        if self.layers is None and self.buffers:
            raise ValueError(packable(models[0]))
        self.record_moments = record_moments
        self.moments: dict[str, tuple[Tensor, Tensor]] = {}

    @property
    def jobs(self) -> int:
        return self.params[0].shape[0]

    def _call(self, params: dict, buffers: dict, x: Tensor) -> Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def _params(self) -> dict:
        return dict(zip(self.names, self.params))

    def _record(self, name: str, h: Tensor, folded: bool) -> None:
        """Job-wise ``mean(h)``, ``mean(h²)`` of a layer input (``[J, B, F]``, or folded ``[B, J·C, H, W]``)."""
        if not (self.record_moments and self.base.training):
            return
        h = h.detach()
        if folded:
            dims, shape = (0, 2, 3), (self.jobs, -1)
            self.moments[name] = (h.mean(dim=dims).view(shape), (h * h).mean(dim=dims).view(shape))
        else:
            self.moments[name] = (h.mean(dim=1), (h * h).mean(dim=1))

    def _batched(self, x: Tensor, shared: bool) -> Tensor:
        """The explicit batched forward. ``x``: ``[J, B, …]``, or with ``shared`` one ``[N, …]`` for every
        job (it gains the job axis at the first layer with weights). Inside, dense activations are
        ``[J, B, F]`` and feature maps ``[B, J·C, H, W]`` (``folded``)."""
        params, jobs = self._params(), self.jobs
        folded = False
        if x.ndim == (4 if shared else 5):  # images: fold the job axis into the channels
            if not shared:
                x = x.transpose(0, 1).flatten(1, 2)
            folded = True
        for name, layer in self.layers:
            weight, bias = params.get(f"{name}.weight"), params.get(f"{name}.bias")
            if isinstance(layer, nn.Flatten):
                if folded and not shared:  # [B, J·C, H, W] → [J, B, C·H·W]
                    x = x.unflatten(1, (jobs, -1)).flatten(2).transpose(0, 1)
                else:
                    x = x.flatten(start_dim=1 if shared else 2)
                folded = False
            elif isinstance(layer, nn.Conv2d):
                if not shared:
                    self._record(name, x, folded=True)
                w = weight.flatten(0, 1)  # [J·O, C, k, k]
                b = bias.flatten() if bias is not None else None
                x = F.conv2d(x, w, b, layer.stride, layer.padding, layer.dilation, groups=1 if shared else jobs)
                shared = False
            elif isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
                x = self._batch_norm(name, layer, x.expand(jobs, *x.shape) if shared else x, folded)
                shared = False
            elif isinstance(layer, nn.GroupNorm):
                if not folded:
                    raise ValueError("packed training batches GroupNorm of feature maps only")
                if shared:
                    x, shared = x.repeat(1, jobs, 1, 1), False
                x = F.group_norm(x, jobs * layer.num_groups, weight.flatten() if weight is not None else None,
                                 bias.flatten() if bias is not None else None, layer.eps)
            elif isinstance(layer, nn.Linear):
                if not shared:
                    self._record(name, x, folded=False)
                if shared:
                    x = torch.matmul(x, weight.mT) if bias is None else torch.matmul(x, weight.mT) + bias.unsqueeze(1)
                    shared = False
                else:
                    x = stacked_linear(x, weight, bias)
            elif isinstance(layer, nn.LayerNorm):
                if folded:
                    raise ValueError("packed training batches LayerNorm of dense activations only")
                x = F.layer_norm(x, layer.normalized_shape, None, None, layer.eps)
                if weight is not None:
                    x = x * weight.unsqueeze(1)
                if bias is not None:
                    x = x + bias.unsqueeze(1)
            else:  # element-wise and pooling layers act per channel: the folded layout is theirs too
                x = layer(x)
        return x.expand(jobs, *x.shape) if shared else x

    def _batch_norm(self, name: str, layer: nn.Module, x: Tensor, folded: bool) -> Tensor:
        """BatchNorm of every job with its own batch statistics and running statistics (see the class)."""
        jobs = self.jobs
        flat = x if folded else x.transpose(0, 1).flatten(1)  # [J, B, F] → [B, J·F]
        running_mean = self.buffers.get(f"{name}.running_mean")
        running_var = self.buffers.get(f"{name}.running_var")
        tracked = self.buffers.get(f"{name}.num_batches_tracked")
        weight, bias = self._params().get(f"{name}.weight"), self._params().get(f"{name}.bias")
        momentum = layer.momentum
        training = layer.training or running_mean is None
        if layer.training and tracked is not None:
            tracked.add_(1)
            if momentum is None:  # a cumulative average: the members share their step count
                momentum = 1.0 / float(tracked[0])
        out = F.batch_norm(flat, running_mean.view(-1) if running_mean is not None else None,
                           running_var.view(-1) if running_var is not None else None,
                           weight.flatten() if weight is not None else None,
                           bias.flatten() if bias is not None else None, training, momentum or 0.0, layer.eps)
        return out if folded else out.unflatten(1, (jobs, -1)).transpose(0, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.layers is not None:
            return self._batched(x, shared=False)
        return vmap(self._call)(self._params(), self.buffers, x)

    def forward_shared(self, x: Tensor) -> Tensor:
        if self.layers is not None:
            return self._batched(x, shared=True)
        return vmap(self._call, in_dims=(0, 0, None))(self._params(), self.buffers, x)

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    @torch.no_grad()
    def export(self, job: int, model: nn.Module) -> None:
        """Copy job ``job``'s slice into its own (unstacked) model."""
        named = dict(model.named_parameters())
        for name, stacked in zip(self.names, self.params):
            named[name].copy_(stacked[job])
        buffers = dict(model.named_buffers())
        for name, stacked in self.buffers.items():
            buffers[name].copy_(stacked[job])


def job_losses(task: str, out: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """Each job's loss ``[J]`` from outputs ``[J, B, …]`` and targets ``[J, B, …]`` (or ``[B, …]`` shared):
    :func:`precond.run.loop.loss_function` per job, mean (training) or sum (evaluation) over its samples."""
    jobs, batch = out.shape[:2]
    if task == "regression":
        per_sample = (out - y).pow(2).flatten(2).mean(dim=2)  # MSE: mean over outputs …
    else:
        target = y.expand(jobs, *y.shape[-1:]) if y.ndim == 1 else y
        per_sample = F.cross_entropy(out.flatten(0, 1), target.flatten(), reduction="none").view(jobs, batch)
    return per_sample.mean(dim=1) if reduction == "mean" else per_sample.sum(dim=1)  # … and over samples
