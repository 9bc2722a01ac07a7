"""DPM-Solver in the Wukong-Huahua release's float16 steps (issue 15, item 2).

The reference numbers below were produced by running the original
``vision/wukong-huahua/ldm/models/diffusion/dpm_solver/dpm_solver.py`` (MindSpore 2.10, CPU)
from a scratch copy, the way its ``sampler.py`` calls it: ``NoiseScheduleVP('discrete')`` on
Wukong's fp16 ``alphas_cumprod`` (float32 MindSpore ``LinSpace(sqrt 0.00085, sqrt 0.012, 1000) ** 2``,
float32 cumprod, stored fp16 under ``use_fp16``), ``DPM_Solver(predict_x0=True)``, ``sample(fp16
x_T, steps, skip_type='time_uniform', method='multistep', order=2, lower_order_final=True)``, with
the deterministic toy model ``eps = fp16(0.5 x - 0.2 + 0.0005 t)`` (float32 arithmetic on the fp16
inputs, fp16 output like Wukong's UNet) and x_T = default_rng(7).standard_normal((1, 4, 8, 8)).

Tolerance: exact (0 ulp). ``precision="original_fp16"`` runs the same MindSpore kernels on the
same fp16 values in the same order, so on CPU every element is bit-identical; anything looser than
one fp16 ulp (~2e-3 at |x| ~ 3) would hide a wrong cast. The float64 path lands 2e-2..4e-2 away.
"""
import numpy as np
import pytest

from mind_diffusion.diffusion.samplers.dpm_solver import sample_dpm_solver
from mind_diffusion.diffusion.schedule import DiffusionSchedule

IDX = [0, 1, 2, 3, 77, 130, 200, 255]
REF = {  # steps: (sum of the 256 fp16 outputs, outputs at IDX, model times the model saw)
    5: (-350.1806640625,
        [-0.86328125, 0.0059967041015625, -1.66796875, -3.46484375, -1.9404296875, -3.337890625,
         -4.51171875, -3.615234375],
        [999.0, 799.5, 599.5, 399.75, 199.875]),
    20: (-296.5489807128906,
         [-0.67578125, 0.1490478515625, -1.4453125, -3.162109375, -1.71484375, -3.037109375,
          -4.13671875, -3.29296875],
         [999.0, 949.0, 899.0, 849.0, 799.5, 749.5, 699.0, 649.5, 599.5, 549.5, 499.5, 449.5,
          399.75, 349.5, 299.75, 249.75, 199.875, 149.875, 99.9375, 49.96875]),
}


def _toy(seen):
    def model(x, t):
        seen.append((x.dtype, t.dtype, float(t[0])))
        x32 = np.asarray(x).astype(np.float32)
        t32 = np.asarray(t).astype(np.float32).reshape(-1, 1, 1, 1)
        return (np.float32(0.5) * x32 - np.float32(0.2) + np.float32(0.0005) * t32).astype(np.float16)
    return model


@pytest.fixture(scope="module")
def wukong_schedule():
    return DiffusionSchedule.create("scaled_linear", 1000, 0.00085, 0.012)


@pytest.mark.parametrize("steps", [5, 20])
def test_original_fp16_reproduces_wukong_dpm_solver(ms_mode, wukong_schedule, steps):
    x_T = np.random.default_rng(7).standard_normal((1, 4, 8, 8)).astype(np.float32)
    seen = []
    out = sample_dpm_solver(_toy(seen), x_T, wukong_schedule, steps, progress=False,
                            precision="original_fp16")
    ref_sum, ref_vals, ref_times = REF[steps]
    assert out.dtype == np.float32 and out.shape == x_T.shape
    assert np.array_equal(out, out.astype(np.float16).astype(np.float32))  # fp16 values
    np.testing.assert_array_equal(out.reshape(-1)[IDX], np.float32(ref_vals))
    assert float(out.astype(np.float64).sum()) == ref_sum
    # the model sees fp16 x and fp16 times (t - 1/T) * 1000, as the original's UNet
    assert all(dx == np.float16 and dt == np.float16 for dx, dt, _ in seen)
    assert [t for _, _, t in seen] == ref_times
    # the default float64 path does not reproduce the original (the test can fail)
    f32 = sample_dpm_solver(lambda x, t: _toy([])(x.astype(np.float16), t.astype(np.float16)),
                            x_T, wukong_schedule, steps, progress=False)
    assert np.abs(f32.reshape(-1)[IDX] - np.float32(ref_vals)).max() > 4e-3  # 2+ fp16 ulps


def test_original_fp16_options_and_errors(wukong_schedule):
    x_T = np.zeros((1, 4, 8, 8), np.float32)
    with pytest.raises(ValueError, match="precision must be one of"):
        sample_dpm_solver(_toy([]), x_T, wukong_schedule, 5, progress=False, precision="fp16")
    with pytest.raises(ValueError, match="time_uniform"):
        sample_dpm_solver(_toy([]), x_T, wukong_schedule, 5, progress=False,
                          precision="original_fp16", skip_type="logSNR")
    with pytest.raises(ValueError, match="epsilon"):
        sample_dpm_solver(_toy([]), x_T, wukong_schedule, 5, progress=False,
                          precision="original_fp16", prediction_type="v_prediction")


def test_wukong_config_selects_original_fp16():
    from pathlib import Path

    from mind_diffusion.config import read_yaml
    from mind_diffusion.ldm.config import ldm_config_defaults

    assert ldm_config_defaults()["sampling"]["dpm_solver_precision"] == "fp32"
    cfg = read_yaml(Path(__file__).resolve().parents[1] / "configs/wukong/v1-inference-chinese.yaml")
    assert cfg["sampling"]["dpm_solver_precision"] == "original_fp16"
