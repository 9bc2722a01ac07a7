"""Text encoder of the latent diffusion models (spec wukong.md §4.1, §5.1-5.3): checkpoint names
vs the manifest, parity with HF ``CLIPTextModel`` on random weights, converters, causal mask and
the 1e-7 LayerNorm eps."""
import json

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from mind_diffusion.checkpoint.convert_text import (
    hf_clip_text_to_ours,
    infer_text_encoder_config,
    openai_clip_text_to_ours,
    ours_to_hf_clip_text,
    text_encoder_param_names,
)
from mind_diffusion.checkpoint.io import load_strict
from mind_diffusion.ldm.text_encoder import TextConditioner, TextEncoder
from mind_diffusion.nn.layers import count_params

TINY = {"vocab_size": 1000, "context_length": 77, "width": 64, "layers": 2, "heads": 4}
BOS, EOS = 998, 999


def _ids(batch_lengths, seed=0, ctx=77):
    """SOT + random content + EOT, then EOT padding (what SD-v1's tokenizer produces)."""
    rng = np.random.default_rng(seed)
    out = np.full((len(batch_lengths), ctx), EOS, np.int64)
    for b, n in enumerate(batch_lengths):
        out[b, 0] = BOS
        out[b, 1:n + 1] = rng.integers(0, BOS, n)
    return out


def _ours_state(net):
    return {p.name: p.asnumpy() for p in net.get_parameters()}


def test_names_shapes_order_match_manifest(shared_dir):
    manifest = json.loads((shared_dir / "reference" / "wukong_param_manifest.json").read_text())
    expected = [(n, tuple(s)) for n, s, _ in manifest if n.startswith("cond_stage_model.")]
    assert len(expected) == 148
    net = TextConditioner()  # Wukong default config; built, never run
    params = list(net.get_parameters())
    ours = [("cond_stage_model." + p.name, tuple(p.shape)) for p in params]
    assert ours == expected
    assert all(p.dtype == ms.float32 for p in params)
    assert count_params(net) == 123_060_480
    # Shape-only views (no memory) are enough for the config inference.
    state = {p.name[len("transformer."):]: np.broadcast_to(np.float32(0), p.shape) for p in params}
    assert list(state) == text_encoder_param_names(12)
    assert infer_text_encoder_config(state) == {"vocab_size": 49408, "context_length": 77,
                                                "width": 768, "layers": 12}
    assert net.transformer.ln_eps == 1e-7 and net.transformer.ln_final.eps == 1e-7


def _hf_model(torch, transformers, seed=0):
    cfg = transformers.CLIPTextConfig(
        vocab_size=TINY["vocab_size"], hidden_size=TINY["width"], intermediate_size=4 * TINY["width"],
        num_hidden_layers=TINY["layers"], num_attention_heads=TINY["heads"],
        max_position_embeddings=TINY["context_length"], hidden_act="quick_gelu", layer_norm_eps=1e-5,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS, attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.CLIPTextModel(cfg).eval()
    with torch.no_grad():  # move every tensor (LN gamma/beta, biases too) off its init value
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _hf_state(model):
    """The on-disk layout (hub ``pytorch_model.bin`` / CompVis SD-v1): ``text_model.``-prefixed
    names; transformers >= 5 drops that prefix from ``state_dict()``, so add it back."""
    state = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    return {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


def test_parity_with_hf_clip_text_model(ms_mode):
    torch = pytest.importorskip("torch", reason="torch is the reference implementation")
    transformers = pytest.importorskip("transformers", reason="HF CLIPTextModel is the reference")
    model = _hf_model(torch, transformers)
    ours_state = hf_clip_text_to_ours(_hf_state(model))
    bare = {k.removeprefix("text_model."): v for k, v in _hf_state(model).items()}
    assert all(np.array_equal(v, ours_state[k]) for k, v in hf_clip_text_to_ours(bare).items())
    assert infer_text_encoder_config(ours_state) == {k: v for k, v in TINY.items() if k != "heads"}
    net = TextEncoder(**TINY, ln_eps=1e-5)
    report = load_strict(net, ours_state)
    assert report.loaded == len(text_encoder_param_names(TINY["layers"]))
    net.set_train(False)
    ids = _ids([5, 20, 75])
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids)).last_hidden_state.numpy()
    for dtype in (ms.int64, ms.int32):
        out = net(Tensor(ids, dtype)).asnumpy()
        err = float(np.abs(out - ref).max())
        print(f"[{ms_mode}] ids {dtype}: max abs err vs HF CLIPTextModel = {err:.3e}")
        assert out.shape == ref.shape == (3, 77, TINY["width"])
        assert err <= 1e-4


def test_hf_round_trip_and_prefix():
    torch = pytest.importorskip("torch", reason="torch builds the HF reference state")
    transformers = pytest.importorskip("transformers", reason="HF CLIPTextModel is the reference")
    hf = _hf_state(_hf_model(torch, transformers, seed=1))
    # Older checkpoints also hold the position_ids buffer: dropped.
    ours = hf_clip_text_to_ours({**hf, "text_model.embeddings.position_ids": np.arange(77)[None]})
    assert list(ours) == text_encoder_param_names(TINY["layers"])
    back = ours_to_hf_clip_text(ours)
    hf_no_buffers = {k: v for k, v in hf.items() if not k.endswith("position_ids")}
    assert set(back) == set(hf_no_buffers)
    for k, v in hf_no_buffers.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
    again = hf_clip_text_to_ours(back)
    assert list(again) == list(ours)
    assert all(np.array_equal(again[k], ours[k]) for k in ours)
    # CompVis SD-v1 checkpoint: text tower under cond_stage_model.transformer., UNet beside it.
    full = {"cond_stage_model.transformer." + k: v for k, v in hf.items()}
    full["model.diffusion_model.out.2.weight"] = np.zeros(3, np.float32)
    from_full = hf_clip_text_to_ours(full, prefix="cond_stage_model.transformer.")
    assert all(np.array_equal(from_full[k], ours[k]) for k in ours)
    # Fused in_proj rows are q, k, v in that order.
    w = ours["transformer_layer.resblocks.1.attn.attn.in_proj.weight"]
    for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
        part = hf[f"text_model.encoder.layers.1.self_attn.{name}.weight"]
        assert np.array_equal(w[j * 64:(j + 1) * 64], part)


def test_openai_layout_matches_hf_layout():
    torch = pytest.importorskip("torch", reason="torch builds the HF reference state")
    transformers = pytest.importorskip("transformers", reason="HF CLIPTextModel is the reference")
    hf = _hf_state(_hf_model(torch, transformers, seed=2))
    t = "text_model."
    oai = {
        "token_embedding.weight": hf[t + "embeddings.token_embedding.weight"],
        "positional_embedding": hf[t + "embeddings.position_embedding.weight"],
        "ln_final.weight": hf[t + "final_layer_norm.weight"],
        "ln_final.bias": hf[t + "final_layer_norm.bias"],
        "text_projection": np.zeros((64, 32), np.float32),
        "logit_scale": np.float32(4.6),
        "visual.conv1.weight": np.zeros((8, 3, 2, 2), np.float32),
    }
    for i in range(TINY["layers"]):
        h, o = f"{t}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            oai[f"{o}attn.in_proj_{kind}"] = np.concatenate(
                [hf[f"{h}self_attn.{p}_proj.{kind}"] for p in "qkv"], axis=0)
            oai[f"{o}attn.out_proj.{kind}"] = hf[f"{h}self_attn.out_proj.{kind}"]
            oai[f"{o}ln_1.{kind}"] = hf[f"{h}layer_norm1.{kind}"]
            oai[f"{o}mlp.c_fc.{kind}"] = hf[f"{h}mlp.fc1.{kind}"]
            oai[f"{o}mlp.c_proj.{kind}"] = hf[f"{h}mlp.fc2.{kind}"]
            oai[f"{o}ln_2.{kind}"] = hf[f"{h}layer_norm2.{kind}"]
    a = openai_clip_text_to_ours({"cond_stage_model.model." + k: v for k, v in oai.items()},
                                 prefix="cond_stage_model.model.")
    b = hf_clip_text_to_ours(hf)
    assert list(a) == list(b)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_converter_errors():
    ours = {n: np.zeros(1, np.float32) for n in text_encoder_param_names(1)}
    hf = ours_to_hf_clip_text({**ours,
        "transformer_layer.resblocks.0.attn.attn.in_proj.weight": np.zeros((6, 2), np.float32),
        "transformer_layer.resblocks.0.attn.attn.in_proj.bias": np.zeros(6, np.float32)})
    with pytest.raises(ValueError, match="unknown tensor names.*text_model.encoder.layers.0.bogus"):
        hf_clip_text_to_ours({**hf, "text_model.encoder.layers.0.bogus": np.zeros(1)})
    with pytest.raises(ValueError, match="missing.*final_layer_norm.bias"):
        hf_clip_text_to_ours({k: v for k, v in hf.items() if "final_layer_norm.bias" not in k})
    with pytest.raises(ValueError, match="prefix 'cond_stage_model.transformer.'"):
        hf_clip_text_to_ours(hf, prefix="cond_stage_model.transformer.")
    with pytest.raises(ValueError, match="not contiguous"):
        ours_to_hf_clip_text({k.replace("resblocks.0.", "resblocks.3."): v for k, v in ours.items()})
    with pytest.raises(ValueError, match="unknown tensor names.*transformer.resblocks.0.attn.in_proj"):
        openai_clip_text_to_ours({"transformer.resblocks.0.attn.in_proj": np.zeros(1)})
    with pytest.raises(ValueError, match="embedding_table"):
        infer_text_encoder_config(hf)


def test_causal_mask_and_int_dtypes(ms_mode):
    ms.set_seed(0)
    net = TextEncoder(vocab_size=50, context_length=16, width=32, layers=2, heads=4)
    net.set_train(False)
    ids = np.random.default_rng(0).integers(0, 50, (1, 16))
    j = 6
    changed = ids.copy()
    changed[0, j] = (ids[0, j] + 1) % 50
    out = net(Tensor(np.concatenate([ids, changed]), ms.int32)).asnumpy()
    out64 = net(Tensor(np.concatenate([ids, changed]), ms.int64)).asnumpy()
    assert np.array_equal(out, out64)
    diff = np.abs(out[0] - out[1]).max(axis=-1)             # per position
    assert diff[:j].max() <= 1e-6, diff
    assert diff[j:].min() > 1e-3, diff
    # A shorter sequence is the prefix of the full one (same mask / positions).
    short = net(Tensor(ids[:, :9], ms.int64)).asnumpy()
    np.testing.assert_allclose(short[0], out[0, :9], atol=1e-5)


def test_default_layernorm_eps_is_1e7_closed_form(ms_mode):
    net = TextEncoder(vocab_size=8, context_length=4, width=16, layers=1, heads=2)
    rng = np.random.default_rng(3)
    emb = (rng.standard_normal((8, 16)) * 1e-3).astype(np.float32)   # var ~1e-6: eps matters
    gamma = (1 + 0.1 * rng.standard_normal(16)).astype(np.float32)
    beta = (0.1 * rng.standard_normal(16)).astype(np.float32)
    state = _ours_state(net)
    state["embedding_table"] = emb
    state["positional_embedding"] = np.zeros((4, 16), np.float32)
    state["ln_final.gamma"], state["ln_final.beta"] = gamma, beta
    for k in state:  # residual branches add exactly zero: the blocks are the identity
        if ".out_proj." in k or ".c_proj." in k:
            state[k] = np.zeros_like(state[k])
    load_strict(net, state)
    ids = np.array([[1, 5, 7, 2]])
    out = net(Tensor(ids, ms.int64)).asnumpy()[0]

    def layer_norm(x, eps):
        x = x.astype(np.float64)
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * gamma + beta

    assert np.abs(out - layer_norm(emb[ids[0]], 1e-7)).max() <= 1e-4
    assert np.abs(out - layer_norm(emb[ids[0]], 1e-5)).max() > 0.1
