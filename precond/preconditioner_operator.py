"""A preconditioner as an operator on flat vectors: ``P``, ``Pᵀ`` and ``M = P Pᵀ`` (docs/theory.md §2, §6).

Everything the theory says in the intrinsic variables ``z`` (``p = P z``) needs ``P`` only through
products: ``κ(PᵀHP)`` takes ``v ↦ Pᵀ H P v``, the z-space regularizers take ``P`` or ``M`` applied to a
vector. So a preconditioner exposes ``P`` as a list of *blocks*, one per parameter or per group of
parameters, each acting on its own slice of the flat parameter vector:

=================  =================================================  =====================================
block              ``P`` on its slice                                  who uses it
=================  =================================================  =====================================
:class:`Diagonal`  ``v ↦ s ⊙ v`` (``s = D^{-1/2}``)                    SGD (absent), AdaGrad, RMSprop, Adam
:class:`Dense`     ``v ↦ A v``                                         full-matrix AdaGrad / RMSprop
:class:`Kronecker` ``vec(G) ↦ vec(A G Bᵀ)`` (``P = A ⊗ B``, row-major)   Shampoo-style factors of a weight
=================  =================================================  =====================================

A parameter with no block has ``P = I``. :meth:`PreconditionerOperator.diagonal` gives ``P`` as one flat
vector when every block is diagonal (the fast path of the curvature code), None otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor


@dataclass
class Diagonal:
    """``P = diag(s)`` on ``[start, start + s.numel())``."""

    start: int
    scale: Tensor

    @property
    def size(self) -> int:
        return self.scale.numel()

    def apply(self, v: Tensor, transpose: bool = False) -> Tensor:
        return self.scale.reshape(-1).to(v) * v

    def dense(self) -> Tensor:
        return torch.diag(self.scale.reshape(-1))


@dataclass
class Dense:
    """``P = A`` (``n × n``) on ``[start, start + n)``."""

    start: int
    matrix: Tensor

    @property
    def size(self) -> int:
        return self.matrix.shape[0]

    def apply(self, v: Tensor, transpose: bool = False) -> Tensor:
        a = self.matrix.to(v)
        return (a.T if transpose else a) @ v

    def dense(self) -> Tensor:
        return self.matrix


@dataclass
class Kronecker:
    """``P = A ⊗ B`` on a weight ``G`` of shape ``(m, k)`` flattened row-major: ``P vec(G) = vec(A G Bᵀ)``."""

    start: int
    left: Tensor
    right: Tensor

    @property
    def size(self) -> int:
        return self.left.shape[0] * self.right.shape[0]

    def apply(self, v: Tensor, transpose: bool = False) -> Tensor:
        a, b = self.left.to(v), self.right.to(v)
        if transpose:
            a, b = a.T, b.T
        g = v.reshape(a.shape[1], b.shape[1])
        return (a @ g @ b.T).reshape(-1)

    def dense(self) -> Tensor:
        return torch.kron(self.left, self.right)


Block = Union[Diagonal, Dense, Kronecker]


class PreconditionerOperator:
    """``P`` over a flat parameter vector of length ``n`` as non-overlapping blocks (``P = I`` elsewhere)."""

    def __init__(self, blocks: list[Block], n: int):
        self.blocks = sorted(blocks, key=lambda b: b.start)
        self.n = n
        end = 0
        for block in self.blocks:
            if block.start < end or block.start + block.size > n:
                raise ValueError(f"preconditioner blocks overlap or exceed the {n} parameters")
            end = block.start + block.size

    def _map(self, v: Tensor, transpose: bool) -> Tensor:
        out = v.clone()
        for block in self.blocks:
            sl = slice(block.start, block.start + block.size)
            out[sl] = block.apply(v[sl], transpose)
        return out

    def apply_P(self, v: Tensor) -> Tensor:
        """``P v``."""
        return self._map(v, transpose=False)

    def apply_Pt(self, v: Tensor) -> Tensor:
        """``Pᵀ v``."""
        return self._map(v, transpose=True)

    def apply_M(self, v: Tensor) -> Tensor:
        """``M v = P Pᵀ v``."""
        return self.apply_P(self.apply_Pt(v))

    def diagonal(self) -> Optional[Tensor]:
        """``P`` as a flat vector (ones where ``P = I``) when every block is diagonal; None otherwise."""
        if any(not isinstance(b, Diagonal) for b in self.blocks):
            return None
        like = self.blocks[0].scale if self.blocks else torch.ones(())
        flat = torch.ones(self.n, dtype=torch.float64, device=like.device)
        for block in self.blocks:
            flat[block.start:block.start + block.size] = block.scale.reshape(-1).double()
        return flat

    def dense(self) -> Tensor:
        """``P`` as an ``n × n`` float64 matrix (small models: the dense curvature path and the tests)."""
        like = self.blocks[0].dense() if self.blocks else torch.ones(())
        out = torch.eye(self.n, dtype=torch.float64, device=like.device)
        for block in self.blocks:
            sl = slice(block.start, block.start + block.size)
            out[sl, sl] = block.dense().double()
        return out
