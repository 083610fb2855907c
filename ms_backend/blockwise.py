"""Block-wise recomputation, Trainer(recompute=True): one micro-batch's gradients computed a block
at a time, keeping only each block's input [R, T, C] between the forward and the backward.

    forward    x_0 = embed(ids);  x_{i+1} = block_i(x_i)             kept: x_0 .. x_L, nothing inside
    top        loss, dx_L, d(wte, ln_f, head) = grad of S x objective.loss_at_top(x_L)
    backward   for i = L-1 .. 0:  dx_i, d(block_i) = the vjp of block_i at x_i, with dx_{i+1}
               (block_i's forward runs again inside it: its activations live for that block only)
    embed      d(wte, wpe) = the vjp of embed at ids, with dx_0

Each gradient is added to the Trainer's summed gradients, as a --grad-accum micro-batch's are, and
the Trainer's update applies the sum (unscale, all-reduce, finite check, clip, AdamW; op by op here,
as a compiled update keeps a workspace of its own).  S is the loss scale: every gradient is scaled,
as in the one-graph step.

The vjp of a block is the gradient of <block(x), dy> (a sum of products, in float32): the sum's
derivative is 1 and the product's is dy, so autodiff starts the block's backward from exactly dy,
the same chain rule as the one-graph step, run in pieces.

Why not MindSpore's Cell.recompute(): on CPU (MindSpore 2.10) the compiled step with every block
marked kept as much memory as without (benchmarks/NOTES.md).  Why one *template* block for all
layers: every compiled graph keeps its own memory for the life of the process (measured: one graph
per block held ~0.6 GB per 124M layer at 4 x 128 tokens, more than the one-graph step), so all
blocks run through one compiled forward and one compiled vjp of a template block, whose Parameters
are loaded with block i's (ops.assign, 28 MB per 124M block) before each call.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import ops

from .amp import to
from .layers import BLOCK_CELLS
from .model import attention_mask_4d


def dot(x, dy):
    """<x, dy> in float32: its gradient with respect to x is dy (the value itself is unused)."""
    return (to(x, ms.float32) * to(dy, ms.float32)).sum()


class BlockwiseGradients:
    """Adds one micro-batch's gradients to `summed` ({parameter name: float32 Parameter}) block by
    block (see the module docstring).  The graphs compile on first use (mode "graph") or run op by
    op (mode "pynative")."""

    def __init__(self, model, objective, scaler, summed: dict, mode: str, block_weights: dict):
        self.model, self.objective, self.scaler = model, objective, scaler
        config = model.config
        # The template: its own Parameters (not the model's), made from any block's weights (a params
        # dict's block); _load overwrites them before every use.
        self.template = BLOCK_CELLS[config.arch](block_weights, config.n_head, config.layer_norm_epsilon,
                                                 model.precision)
        self.template_params = tuple(self.template.trainable_params())
        self.block_params = [tuple(block.trainable_params()) for block in model.blocks]
        in_blocks = {id(p) for params in self.block_params for p in params}
        self.top_params = tuple(p for p in model.trainable_params() + [p for cell in objective.cells
                                                                         for p in cell.trainable_params()]
                                if id(p) not in in_blocks and p is not model.wpe)
        self.embed_params = (model.wte, model.wpe)
        self.block_sums = [tuple(summed[p.name] for p in params) for params in self.block_params]
        self.top_sums = tuple(summed[p.name] for p in self.top_params)
        self.embed_sums = tuple(summed[p.name] for p in self.embed_params)
        self._top_value_and_grad = ms.value_and_grad(self._scaled_top_loss, 0, self.top_params, has_aux=True)
        self._embed_grad = ms.grad(self._embed_dot, None, self.embed_params)
        run = ms.jit if mode == "graph" else (lambda f: f)
        self._embed = run(self._embed_fn)
        self._block = run(self._block_fn)
        self._top = run(self._top_fn)
        self._block_vjp = run(ms.grad(self._block_dot, 0, self.template_params))
        self._embed_vjp = run(self._embed_vjp_fn)

    # -- the pieces (each one compiled graph in mode "graph") -------------------------------------

    def _embed_fn(self, ids, position_ids, drop):
        return self.model.embed(ids, position_ids, drop)

    def _embed_dot(self, ids, position_ids, drop, dy):
        return dot(self._embed_fn(ids, position_ids, drop), dy)

    def _block_fn(self, x, mask, drops):
        n_tokens = x.shape[1]
        return self.template(x, attention_mask_4d(n_tokens, n_tokens, mask), None, None, drops)[0]

    def _block_dot(self, x, mask, drops, dy):
        return dot(self._block_fn(x, mask, drops), dy)

    def _scaled_top_loss(self, top, drops, batch, totals):
        loss = self.objective.loss_at_top(self.model, drops, batch, totals, top)
        return self.scaler.scale(loss), loss

    def _top_fn(self, top, drops, batch, totals):
        """-> (the loss, dtop); the top weights' gradients added to their sums in the graph (no
        gradient of wte's size handed out)."""
        (_, loss), (dtop, grads) = self._top_value_and_grad(top, drops, batch, totals)
        return ops.depend(loss, self._added(self.top_sums, grads)), dtop

    def _embed_vjp_fn(self, ids, position_ids, drop, dy):
        return self._added(self.embed_sums, self._embed_grad(ids, position_ids, drop, dy))

    def _added(self, sums, grads):
        """Add each gradient to its sum, one after another; -> the last add.  Inside the top and
        embedding graphs, and op by op for the template's gradients (their sums change per block)."""
        done = ops.assign_add(sums[0], grads[0])
        for i in range(1, len(sums)):
            done = ops.assign_add(sums[i], ops.depend(grads[i], done))
        return done

    # -- one micro-batch ---------------------------------------------------------------------------

    def _load(self, layer: int) -> None:
        """The template computes block `layer` from now on."""
        for template_param, param in zip(self.template_params, self.block_params[layer]):
            ops.assign(template_param, param)

    def accumulate(self, drops, batch, totals):
        """Add this micro-batch's scaled gradients to the sums; -> its (unscaled) share of the loss."""
        ids, position_ids, mask = batch["ids"], batch["position_ids"], batch["mask"]
        embed_drop = None if drops is None else drops["embed"]
        layer_drops = [None if drops is None else ms.mutable(drops["blocks"][i]) for i in range(len(self.block_params))]
        x = self._embed(ids, position_ids, embed_drop)
        inputs = []
        for layer, block_drops in enumerate(layer_drops):
            inputs.append(x)
            self._load(layer)
            x = self._block(x, mask, block_drops)
        loss, dx = self._top(x, drops, batch, totals)
        for layer in reversed(range(len(inputs))):
            self._load(layer)
            dx, block_grads = self._block_vjp(inputs.pop(), mask, layer_drops[layer], dx)
            self._added(self.block_sums[layer], block_grads)
        self._embed_vjp(ids, position_ids, embed_drop, dx)
        return loss
