"""ms_backend.Trainer's memory options compute the same gradients: recompute=True (every block's
forward run again in the backward, Cell.recompute) against the float64 spec within the same bounds as
without it (test_ms_train's check), and bit for bit equal to the Trainer without it.  The memory
they save (or not) is measured by benchmarks/bench_train.py, not here."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mindspore", reason="the MindSpore backend needs the `mindspore` extra")

import ref_numpy as R  # noqa: E402
from ms_backend.train import Trainer  # noqa: E402

from .test_ms_train import CONFIGS, GRAPH_BATCH, assert_gradients_match, float32_model, padded_batch  # noqa: E402

pytestmark = pytest.mark.mindspore


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_recompute_gradients_match_the_float64_spec(arch):
    config = CONFIGS[arch]
    params32, params64 = float32_model(config, 3)
    batch = padded_batch(config, **GRAPH_BATCH)
    recomputed = Trainer(config, params32, mode="graph", loss_scale=None, recompute=True)
    # MindSpore's own mark of a Cell configured by recompute() (its only public trace is the graph)
    assert all(block._has_config_recompute for block in recomputed.model.blocks)
    assert_gradients_match(recomputed, config, params32, params64, batch)
    loss, grads, _ = recomputed.grads_numpy(*batch)
    loss_kept, grads_kept, _ = Trainer(config, params32, mode="graph", loss_scale=None).grads_numpy(*batch)
    assert loss == loss_kept
    for name, g in R.flatten_params(grads_kept).items():
        np.testing.assert_array_equal(R.flatten_params(grads)[name], g, err_msg=name)


def test_recompute_must_be_a_bool():
    config = CONFIGS["gpt2"]
    with pytest.raises(ValueError, match="recompute must be True or False, got 'yes'"):
        Trainer(config, float32_model(config, 0)[0], recompute="yes")
