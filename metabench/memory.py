"""What an autograd graph holds for its backward: the measure behind iMAML's claim that its
memory does not grow with the inner step count (tests/test_imaml.py, scripts/imaml_memory.py)."""

from __future__ import annotations

import torch


def graph_saved_bytes(loss: torch.Tensor) -> int:
    """Bytes of the tensors saved for the backward by every node of ``loss``'s graph (each node
    once; a tensor two nodes save counts twice, as autograd may keep two views)."""
    seen, total, stack = set(), 0, [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for attr in dir(node):
            value = getattr(node, attr, None) if attr.startswith("_saved_") else None
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
        stack.extend(fn for fn, _ in node.next_functions)
    return total
