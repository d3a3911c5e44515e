"""The model: Kyutai's LM (temporal and depth transformers) from its JSON config, its weights and its generator."""
