"""Feature extractors: ``forward(x [B, *input_shape]) -> [B, out_dim]``; spatial ones also
offer ``feature_map`` for algorithms that need maps."""
