"""A CUDA run's statistics equal the CPU run's to float32 tolerance (skipped without CUDA).

Both runs evaluate the same weights (the CPU run's checkpoint, ``epochs=0`` on CUDA), so only the
arithmetic differs: every statistics column of ``units`` and ``unit_classes`` must agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from compute.run.config import RunConfig
from compute.run.pipeline import compute_run

STATS = {"units": ("mean_act", "mean_rect", "max_act", "frac_active", "selectivity", "mu_max", "mu_rest",
                   "grad_mean", "grad_abs_mean", "taylor"),
         "unit_classes": ("mean_act", "mean_rect", "grad_mean", "grad_abs_mean", "taylor", "frac_active")}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_statistics_match_cpu(tmp_path: Path) -> None:
    base = dict(model="lenet5", dataset="mnist-5k", train_size=500, eval_size=300, images=None, seed=0)
    cpu = compute_run(RunConfig(epochs=1, run_id="cpu", **base), tmp_path)
    gpu = compute_run(RunConfig(epochs=0, checkpoint=str(cpu.path / "checkpoint.pt"), device="cuda", run_id="gpu",
                                **base), tmp_path)
    for table, columns in STATS.items():
        a = pq.read_table(cpu.path / f"{table}.parquet").to_pandas()
        b = pq.read_table(gpu.path / f"{table}.parquet").to_pandas()
        assert len(a) == len(b) > 0
        for c in columns:
            np.testing.assert_allclose(b[c].to_numpy(float), a[c].to_numpy(float), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{table}.{c}")
    assert gpu.figures["eval_acc"] == pytest.approx(cpu.figures["eval_acc"], abs=1 / 300)
