"""Classifier-free guidance: numpy wrapper and the in-graph GuidedModel cell."""
import numpy as np
import pytest

from mind_diffusion.diffusion.guidance import (GuidedModel, classifier_free_guidance,
                                               guidance_combine)


def _toy_numpy_model(calls):
    def model(x, t, cond):
        calls.append((x.shape, t.shape, cond.shape))
        gain = 1.0 + cond.mean(axis=1)
        return x * gain[:, None, None, None] + 0.001 * t[:, None, None, None]
    return model


def test_numpy_guidance_formula_and_order():
    calls = []
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 4, 4))
    t = np.array([10, 20, 30], dtype=np.int64)
    cond = np.concatenate([np.zeros((3, 5)), np.ones((3, 5))])  # uncond (zeros) first
    fn = classifier_free_guidance(_toy_numpy_model(calls), 7.5, cond)
    out = fn(x, t)
    assert calls == [((6, 2, 4, 4), (6,), (6, 5))]  # one doubled-batch call
    uncond = x * 1.0 + 0.001 * t[:, None, None, None]
    cond_out = x * 2.0 + 0.001 * t[:, None, None, None]
    np.testing.assert_allclose(out, uncond + 7.5 * (cond_out - uncond))
    np.testing.assert_allclose(classifier_free_guidance(_toy_numpy_model([]), 1.0, cond)(x, t),
                               cond_out)
    np.testing.assert_allclose(classifier_free_guidance(_toy_numpy_model([]), 0.0, cond)(x, t),
                               uncond)


def test_eps_channels_guides_only_eps_part():
    out = np.arange(4 * 4 * 2, dtype=np.float64).reshape(4, 4, 2)  # batch 2 doubled, 2C=4
    res = guidance_combine(out, 3.0, eps_channels=2)
    u, c = out[:2], out[2:]
    np.testing.assert_allclose(res[:, :2], u[:, :2] + 3.0 * (c[:, :2] - u[:, :2]))
    np.testing.assert_allclose(res[:, 2:], c[:, 2:])


def test_guidance_bad_arguments():
    with pytest.raises(ValueError, match="scale"):
        classifier_free_guidance(lambda *a: a[0], float("nan"), None)
    with pytest.raises(ValueError, match="eps_channels"):
        classifier_free_guidance(lambda *a: a[0], 2.0, None, eps_channels=0)
    with pytest.raises(ValueError, match="callable"):
        classifier_free_guidance(None, 2.0, None)
    with pytest.raises(ValueError, match="even batch"):
        guidance_combine(np.zeros((3, 2)), 2.0)
    fn = classifier_free_guidance(lambda x, t, c: x[:1], 2.0, None)
    with pytest.raises(ValueError, match="doubled input batch"):
        fn(np.zeros((2, 1)), np.zeros(2))


@pytest.mark.parametrize("eps_channels", [None, 2])
def test_guided_model_cell_matches_numpy(ms_mode, eps_channels):
    import mindspore as ms
    from mindspore import nn, ops

    class ToyNet(nn.Cell):
        def __init__(self, out_mult):
            super().__init__()
            self.out_mult = out_mult

        def construct(self, x, t, cond):
            gain = 1.0 + ops.mean(cond, 1)
            y = x * ops.reshape(gain, (-1, 1, 1, 1)) \
                + 0.001 * ops.reshape(ops.cast(t, ms.float32), (-1, 1, 1, 1))
            if self.out_mult == 2:
                y = ops.concat((y, ops.tanh(y)), 1)
            return y

    net = ToyNet(1 if eps_channels is None else 2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    t = np.array([5, 900], dtype=np.int32)
    cond = rng.standard_normal((4, 6)).astype(np.float32)

    def np_model(xi, ti, ci):
        return net(ms.Tensor(xi), ms.Tensor(ti), ms.Tensor(ci)).asnumpy()

    expected = classifier_free_guidance(np_model, 5.0, cond, eps_channels=eps_channels)(x, t)
    cell = GuidedModel(net, 5.0, eps_channels=eps_channels)
    got = cell(ms.Tensor(x), ms.Tensor(t), ms.Tensor(cond)).asnumpy()
    assert got.shape == expected.shape == ((2, 2, 3, 3) if eps_channels is None else (2, 4, 3, 3))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
