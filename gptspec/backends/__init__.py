"""The built-in backends of the protocol in gptspec/backend.py (`--backend NAME`):

    mindspore  ms_backend (GPTModel for inference, Trainer for gradients and updates)
    hf         Hugging Face transformers on PyTorch (the `oracle` extra): an independent implementation
    numpy      the spec itself at float32 or float64: the baseline every check must pass on

Each module's `factory(config, params, **options)` builds one; a third-party backend is any
module with such a factory (`--backend MODULE:FACTORY`)."""
