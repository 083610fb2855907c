"""The protocol (gptspec/backend.py) over ms_backend: GPTModel for forward, trace, cache and the
AMP dtype log; ms_backend.Trainer for gradients, updates and the injected overflow.

    gptspec parity --backend mindspore --option amp_level=O2 --option mode=graph
    (the same as gptspec parity --amp O2 --mode graph)

Options: amp_level "O0".."O3", dtype "float16"/"bfloat16" (the AMP low dtype; O1-O3 only), mode
"pynative" or "graph" -- ms_backend's own arguments, refused by it with ValueError when wrong.
"""
from __future__ import annotations

import gc

import ms_backend
from ms_backend.amp import record_dtypes

__all__ = ["factory", "MindSporeBackend"]


def factory(config, params, *, amp_level="O0", dtype=None, mode="pynative", model=None):
    """A MindSporeBackend; `model` (an ms_backend.GPTModel already built from `params`) is used as
    it is, with its own amp_level, dtype and mode."""
    return MindSporeBackend(config, params, amp_level=amp_level, dtype=dtype, mode=mode, model=model)


class MindSporeBackend:
    """ms_backend as a protocol backend.  Training builds an ms_backend.Trainer from the factory's
    params the first time gradients or an update are asked for (one per set of hyper-parameters:
    a Trainer's are fixed; the previous one is dropped), at the model's precision and mode."""

    name = "mindspore (gptspec ms_backend)"

    def __init__(self, config, params, *, amp_level="O0", dtype=None, mode="pynative", model=None):
        import mindspore

        ms_backend.precision_for(amp_level, dtype)  # a bad level or dtype is bad input (ValueError)
        self.model = model or ms_backend.GPTModel(config, params, amp_level=amp_level, dtype=dtype, mode=mode)
        self.config, self.params = config, params
        self.amp_level, self.mode = self.model.amp_level, self.model.mode
        self.low_dtype = self.model.low_dtype
        self.dtype = "float32" if self.amp_level == "O0" else (self.low_dtype or "float16")
        self.version = f"mindspore {mindspore.__version__}"
        self.device = ms_backend.device_target()
        self._log: list = []
        self._trainers: dict = {}

    def forward(self, ids, attention_mask=None, *, trace=None, past=None):
        """(logits, present): ms_backend.GPTModel.forward_numpy.  A traced run (PyNative, in
        either mode) also records the dtype each Cell computed in, for dtype_log; recording reads
        every tensor's dtype, so untraced runs skip it."""
        if trace is None:
            return self.model.forward_numpy(ids, attention_mask=attention_mask, past=past)
        with record_dtypes() as log:
            logits, present = self.model.forward_numpy(ids, attention_mask=attention_mask, past=past, trace=trace)
        self._log = list(log)
        return logits, present

    def dtype_log(self) -> list:
        return self._log

    # -- training: ms_backend.Trainer ---------------------------------------------------------------

    def _trainer(self, head=None, lm_coef=0.5, **hyper):
        key = (id(head), lm_coef, tuple(sorted(hyper.items())))
        if key not in self._trainers:
            # One Trainer at a time: each holds the model, its gradients and AdamW's moments (124M:
            # ~2 GB), and gptspec asks for gradients, then the classifier, then the update.
            self._trainers.clear()
            gc.collect()
            scaling = {} if self.amp_level != "O0" else {"loss_scale": None}
            objective = None if head is None else ms_backend.Classifier(head, "classify", lm_coef)
            self._trainers[key] = ms_backend.Trainer(self.config, self.params, objective=objective,
                                                     amp_level=self.amp_level, dtype=self.low_dtype, mode=self.mode,
                                                     **scaling, **hyper)
        return self._trainers[key]

    def loss_and_grads(self, inputs, targets, attention_mask=None):
        """The gradients at the factory's params (a Trainer that never steps)."""
        return self._trainer().grads_numpy(inputs, targets, attention_mask)[:2]

    def classifier_loss_and_grads(self, head, ids, labels, clf_positions, attention_mask=None, *, lm_coef=0.5):
        return tuple(self._trainer(head=head, lm_coef=lm_coef).grads_numpy(ids, labels, attention_mask,
                                                                            clf_positions=clf_positions))

    def train_step(self, inputs, targets, attention_mask=None, *, lr, betas, eps, weight_decay, max_grad_norm,
                   overflow=False):
        """One Trainer.step; with overflow=True the loss scale is first raised to 2^100, which
        overflows any float16 gradient: the Trainer must skip the update and halve the scale."""
        trainer = self._trainer(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                max_grad_norm=max_grad_norm)
        if overflow:
            if trainer.scaler.kind != "dynamic":
                raise ValueError(f"an injected overflow needs dynamic loss scaling: at {self.amp_level} this "
                                 f"backend trains without a loss scale")
            trainer.scaler.restore({"scale": 2.0 ** 100, "counter": 0})
        result = trainer.step(inputs, targets, attention_mask)
        return {"loss": result.loss, "grad_norm": result.grad_norm, "params": trainer.params_numpy(),
                "skipped": result.skipped, "loss_scale": result.loss_scale, "next_loss_scale": trainer.loss_scale}

