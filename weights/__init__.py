"""Loading and converting GPT checkpoints into ref_numpy's params dict."""
