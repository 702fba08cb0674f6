"""Datasets: each turns raw files into a class-major uint8 tensor once, then samples by index.

Every dataset object offers ``kind`` ("classification" or "regression"), ``input_shape``,
``problems(split, spec)`` (what makes an episode spec impossible, as sentences) and
``sampler(split, spec, device)``.
"""
