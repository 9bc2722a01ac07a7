"""KL autoencoder of the Wukong / SD-v1 port: names vs the Wukong manifest, parity with
diffusers' AutoencoderKL on random weights (graph and pynative), name converters."""
import json
import re
import warnings

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from mind_diffusion.checkpoint.convert_vae import (
    compvis_vae_to_diffusers,
    compvis_vae_to_ours,
    diffusers_vae_to_compvis,
    ours_to_compvis_vae,
)
from mind_diffusion.checkpoint.io import load_strict
from mind_diffusion.ldm.autoencoder import (
    AutoencoderKL,
    VAEDecoder,
    VAEEncoder,
    vae_unused_param_names,
)
from mind_diffusion.nn.layers import apply_compute_dtype, count_params

TINY = {"ch": 32, "ch_mult": (1, 2), "num_res_blocks": 2, "num_groups": 8, "embed_dim": 4, "z_channels": 4}
TOL = 1e-4


# ----------------------------------------------------------------------------- names / shapes

@pytest.fixture(scope="module")
def full_vae():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    return AutoencoderKL()  # built once, never run


def test_names_shapes_order_match_manifest(full_vae, shared_dir):
    manifest = json.loads((shared_dir / "reference" / "wukong_param_manifest.json").read_text())
    prefix = "first_stage_model."
    ref = [(n[len(prefix):], tuple(s)) for n, s, _ in manifest if n.startswith(prefix)]
    ours = [(p.name, tuple(p.shape)) for p in full_vae.get_parameters()]
    assert len(ref) == 252
    assert ours == ref


def test_full_size_param_count(full_vae):
    assert count_params(full_vae) == 86_161_255
    unused = set(vae_unused_param_names(4))
    n_unused = sum(int(np.prod(p.shape)) for p in full_vae.get_parameters() if p.name in unused)
    assert n_unused == 2_507_392


def test_bad_config_errors():
    with pytest.raises(ValueError, match="num_groups"):
        AutoencoderKL(ch=20, ch_mult=(1,), num_groups=8)
    with pytest.raises(ValueError, match="double_z"):
        AutoencoderKL(double_z=False)


# ----------------------------------------------------------------------------- diffusers parity

@pytest.fixture(scope="module")
def reference():
    """Tiny diffusers AutoencoderKL with noticeable random weights, its numpy state and outputs."""
    torch = pytest.importorskip("torch", reason="torch is the test-only reference")
    diffusers = pytest.importorskip("diffusers", reason="diffusers is the test-only reference")
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=2,
        latent_channels=4, norm_num_groups=8).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name == "quant_conv.weight":  # keeps exp(logvar / 2) O(1), so the sample is too
                p.copy_(0.05 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    rng = np.random.RandomState(0)
    x = rng.randn(2, 3, 32, 32).astype(np.float32)
    z = rng.randn(2, 4, 16, 16).astype(np.float32)
    noise = rng.randn(2, 4, 16, 16).astype(np.float32)
    with torch.no_grad():
        dist = ref.encode(torch.from_numpy(x)).latent_dist
        mean, logvar = dist.mean.numpy(), dist.logvar.numpy()
        image = ref.decode(torch.from_numpy(z)).sample.numpy()
    state = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    return {"state": state, "x": x, "z": z, "noise": noise, "mean": mean, "logvar": logvar,
            "image": image, "sample": mean + np.exp(0.5 * logvar) * noise}


def _ours_from_diffusers(state):
    ours, filled = compvis_vae_to_ours(diffusers_vae_to_compvis(state))
    vae = AutoencoderKL(**TINY)
    report = load_strict(vae, ours, allow_missing=filled)
    assert report.loaded == len(list(vae.get_parameters()))
    return vae, filled


class _Encode(nn.Cell):
    def __init__(self, vae):
        super().__init__(auto_prefix=False)
        self.vae = vae

    def construct(self, x, noise):
        return self.vae.encode(x, noise)


def _maxabs(a, b):
    return float(np.abs(a.asnumpy() - b).max())


def test_parity_with_diffusers(reference, ms_mode):
    vae, filled = _ours_from_diffusers(reference["state"])
    assert sorted(filled) == sorted(vae_unused_param_names(2))
    x, z, noise = Tensor(reference["x"]), Tensor(reference["z"]), Tensor(reference["noise"])
    mean, logvar = VAEEncoder(vae)(x)
    image = VAEDecoder(vae)(z)
    sample = _Encode(vae)(x, noise)
    errs = {"mean": _maxabs(mean, reference["mean"]), "logvar": _maxabs(logvar, reference["logvar"]),
            "decode": _maxabs(image, reference["image"]), "encode": _maxabs(sample, reference["sample"])}
    print(f"[{ms_mode}] max abs err vs diffusers: {errs}; "
          f"|image| max {np.abs(reference['image']).max():.2f}, |logvar| max "
          f"{np.abs(reference['logvar']).max():.2f}, |sample| max {np.abs(reference['sample']).max():.2f}")
    assert image.shape == (2, 3, 32, 32) and image.dtype == ms.float32
    assert all(e <= TOL for e in errs.values()), errs


def test_unused_cells_are_unused(reference):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    vae, _ = _ours_from_diffusers(reference["state"])
    x, noise, z = Tensor(reference["x"]), Tensor(reference["noise"]), Tensor(reference["z"])
    before = (vae.encode(x, noise).asnumpy(), vae.decode(z).asnumpy(), vae(x, noise).asnumpy())
    rng = np.random.RandomState(1)
    unused = set(vae_unused_param_names(2))
    touched = 0
    for p in vae.get_parameters():
        if p.name in unused:
            p.set_data(Tensor(rng.randn(*p.shape).astype(np.float32)))
            touched += 1
    assert touched == 4
    after = (vae.encode(x, noise).asnumpy(), vae.decode(z).asnumpy(), vae(x, noise).asnumpy())
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- converters

def _ours_state(vae):
    return {p.name: p.asnumpy() for p in vae.get_parameters()}


def test_round_trip_ours_compvis_ours():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    vae = AutoencoderKL(**TINY)
    ours = _ours_state(vae)
    compvis = ours_to_compvis_vae(ours)
    unused = vae_unused_param_names(2)
    assert set(compvis) == {re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k))
                            for k in ours if k not in unused}
    assert not any(k.endswith((".gamma", ".beta")) for k in compvis)
    back, filled = compvis_vae_to_ours(compvis)
    assert sorted(filled) == sorted(unused)
    assert set(back) == set(ours)
    for k, v in ours.items():
        if k in unused:
            assert back[k].shape == v.shape and not back[k].any()
        else:
            np.testing.assert_array_equal(back[k], v)


def test_round_trip_diffusers_compvis_diffusers(reference):
    state = reference["state"]
    compvis = diffusers_vae_to_compvis(state)
    back = compvis_vae_to_diffusers(compvis)
    assert set(back) == set(state)
    for k, v in state.items():
        assert back[k].shape == v.shape, k
        np.testing.assert_array_equal(back[k], v)


def test_diffusers_old_attention_names(reference):
    state = reference["state"]
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for k, v in state.items():
        for new, legacy in old_names.items():
            k = k.replace(f"attentions.0.{new}.", f"attentions.0.{legacy}.")
        old[k] = v
    a, b = diffusers_vae_to_compvis(state), diffusers_vae_to_compvis(old)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)


def test_converter_errors_and_loss_keys():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    compvis = ours_to_compvis_vae(_ours_state(AutoencoderKL(**TINY)))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ours, _ = compvis_vae_to_ours({**compvis, "loss.logvar": np.zeros(()),
                                       "loss.discriminator.main.0.weight": np.zeros((4, 3, 4, 4))})
    assert any("loss" in str(w.message) for w in rec)
    assert not any(k.startswith("loss.") for k in ours)
    with pytest.raises(ValueError, match="encoder.bogus.weight"):
        compvis_vae_to_ours({**compvis, "encoder.bogus.weight": np.zeros(1)})
    with pytest.raises(ValueError, match="first_stage_model"):
        compvis_vae_to_ours({f"first_stage_model.{k}": v for k, v in compvis.items()})
    with pytest.raises(ValueError, match="not names of mind_diffusion"):
        ours_to_compvis_vae(compvis)  # torch norm names are not ours
    with pytest.raises(ValueError, match="time_emb_proj"):
        diffusers_vae_to_compvis({"decoder.up_blocks.0.resnets.0.time_emb_proj.weight": np.zeros((2, 2))})


def test_logvar_is_clipped_and_fp16_policy_runs():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    vae = AutoencoderKL(**TINY)
    x = Tensor(np.random.RandomState(2).randn(1, 3, 16, 16).astype(np.float32))
    bias = np.zeros(8, np.float32)
    for value, expect in ((1e4, 20.0), (-1e4, -30.0)):
        bias[4:] = value  # the logvar half of the moments
        vae.quant_conv.bias.set_data(Tensor(bias))
        mean, logvar = vae.encode_moments(x)
        assert mean.shape == logvar.shape == (1, 4, 8, 8)
        np.testing.assert_array_equal(logvar.asnumpy(), np.full((1, 4, 8, 8), expect, np.float32))
    # Wukong precision policy: convs in fp16, norms / softmax in fp32; outputs stay fp32
    z = Tensor(np.random.RandomState(3).randn(1, 4, 8, 8).astype(np.float32))
    ref = vae.decode(z).asnumpy()
    out = apply_compute_dtype(vae, ms.float16).decode(z)
    assert out.dtype == ms.float32
    err = float(np.abs(out.asnumpy() - ref).max())
    assert err < 2e-2 * max(1.0, float(np.abs(ref).max())), err
