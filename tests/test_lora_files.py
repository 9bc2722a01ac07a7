"""LoRA files: parity with diffusers + peft on identical random weights (diffusers' own
pytorch_lora_weights.safetensors, the same LoRA as a kohya file, the older diffusers names),
our own files round trip, MindPet-named checkpoints, and one clear line for bad files."""
import json

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from mind_diffusion.checkpoint.convert_lora import LoRAFileError, lora_name_table, parse_lora, split_lora_keys
from mind_diffusion.checkpoint.io import save_atomic
from mind_diffusion.ldm.lora import _read_tensors, add_to_weights, attach_separate, parse_lora_arg, save_lora
from mind_diffusion.nn.lora import inject_lora, lora_layers, lora_parameters
from test_ldm_unet import _inputs, _load_ours, _random_diffusers_unet

# one level with attention: every LoRA target kind, quick to build and run
TINY = {"model_channels": 16, "channel_mult": (1,), "num_res_blocks": 1, "attention_resolutions": (1,),
        "num_heads": 2, "context_dim": 12, "num_groups": 8}

# peft's module names; conv1 / conv2 are the ResBlocks' 3x3 convolutions (kohya LoCon, our
# in_layers_conv.conv / out_layers_conv.conv)
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2"]
OUR_TARGETS = {"conv1": "in_layers_conv.conv", "conv2": "out_layers_conv.conv"}
T = np.array([999, 17], np.int64)


@pytest.fixture(scope="module")
def peft_reference(tmp_path_factory):
    """A diffusers UNet with random weights and a random peft LoRA (r 4, alpha 8): its output
    with and without the LoRA, the LoRA saved by diffusers, and the base state."""
    torch = pytest.importorskip("torch", reason="torch is the reference for LoRA parity")
    pytest.importorskip("peft", reason="peft is diffusers' LoRA backend")
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet, dcfg = _random_diffusers_unet(TINY)
    base_state = {k: v.detach().numpy().copy() for k, v in unet.state_dict().items()}
    x, ctx = _inputs(TINY)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    unet.add_adapter(config)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        ref = unet(torch.from_numpy(x), torch.from_numpy(T), encoder_hidden_states=torch.from_numpy(ctx)).sample.numpy()
    lora_sd = get_peft_model_state_dict(unet)
    folder = tmp_path_factory.mktemp("peft")
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=lora_sd,
                                              unet_lora_adapter_metadata=config.to_dict())
    unet.disable_adapters()
    with torch.no_grad():
        ref_base = unet(torch.from_numpy(x), torch.from_numpy(T), encoder_hidden_states=torch.from_numpy(ctx)).sample.numpy()
    lora_np = {k: v.detach().numpy().copy() for k, v in lora_sd.items()}
    return {"unet": unet, "dcfg": dcfg, "ref": ref, "ref_base": ref_base, "x": x, "ctx": ctx,
            "file": folder / "pytorch_lora_weights.safetensors", "lora": lora_np, "folder": folder,
            "base_state": base_state}


def _our_unet(ref):
    import torch

    class _Holder(torch.nn.Module):  # _load_ours reads .state_dict()
        def state_dict(self):
            return {k: torch.from_numpy(v) for k, v in ref["base_state"].items()}

    ms.set_context(mode=ms.PYNATIVE_MODE)
    net, _ = _load_ours(_Holder(), ref["dcfg"], TINY)
    return net


def _read(net, path):
    table = lora_name_table({p.name: tuple(p.shape) for p in net.get_parameters()}, "", TINY)
    state, meta = _read_tensors(path)
    return parse_lora(state, table, str(path), meta=meta, default_alpha=4.0)


def _run(net, ref):
    return net(Tensor(ref["x"]), Tensor(ref["T"] if "T" in ref else T.astype(np.int32)), Tensor(ref["ctx"])).asnumpy()


def _check(out, ref, what):
    err = float(np.abs(out - ref["ref"]).max())
    assert np.abs(ref["ref"] - ref["ref_base"]).max() > 0.05, "the LoRA must change the output"
    assert err <= 1e-4, f"{what}: max abs err {err:.3g} vs diffusers + peft"


def test_diffusers_peft_file_parity_merged_and_separate(peft_reference):
    """diffusers' own pytorch_lora_weights.safetensors (peft lora_A/lora_B names, alpha from the
    lora_adapter_metadata header) gives diffusers' LoRA output, merged or as separate layers."""
    ref = peft_reference
    net = _our_unet(ref)
    parsed = _read(net, ref["file"])
    assert parsed.format == "diffusers" and len(parsed.adapters) == len(ref["lora"]) // 2
    assert {a.scale for a in parsed.adapters} == {2.0}
    w0 = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    add_to_weights(net, parsed.adapters, 1.0)
    _check(_run(net, ref), ref, "merged")
    add_to_weights(net, parsed.adapters, -1.0)
    assert max(np.abs(p.asnumpy() - w0[p.name]).max() for p in net.get_parameters()) <= 1e-6
    assert attach_separate(net, [(parsed.adapters, 1.0)]) == len(parsed.adapters)
    _check(_run(net, ref), ref, "separate")


def _kohya_state(lora: dict, alpha: float) -> dict:
    out = {}
    for name, v in lora.items():
        module, _, kind = name.rpartition(".lora_")
        flat = "lora_unet_" + module.replace(".", "_")
        is_conv = module.endswith(("proj_in", "proj_out"))
        arr = v.reshape(*v.shape, 1, 1) if is_conv else v   # kohya stores SD-v1 proj_in/out as 1x1 convs
        out[flat + (".lora_down.weight" if kind.startswith("A") else ".lora_up.weight")] = arr
        out[flat + ".alpha"] = np.asarray(alpha, np.float32)
    return out


def test_kohya_and_old_diffusers_files_parity(peft_reference, tmp_path):
    """The same LoRA written as a kohya / A1111 file (lora_unet_*, lora_down/lora_up/alpha, 1x1
    conv proj layers) and with the older diffusers names (.lora.down/.lora.up + .alpha) gives
    the same output; diffusers' own kohya converter reads our kohya names as the peft modules."""
    from safetensors.numpy import save_file
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers

    ref = peft_reference
    kohya = _kohya_state(ref["lora"], 8.0)
    save_file(kohya, str(tmp_path / "kohya.safetensors"))
    converted, alphas = _convert_non_diffusers_lora_to_diffusers(dict(kohya))
    # diffusers' reading of our kohya names (attention-processor spelling) = peft's modules
    _fmt, modules = split_lora_keys(converted, "converted")
    assert set(modules) == {"unet." + k.rsplit(".lora_", 1)[0] for k in ref["lora"]}
    assert set(alphas.values()) == {8.0}
    old = {}
    for name, v in ref["lora"].items():
        module, _, kind = name.rpartition(".lora_")
        old[f"unet.{module}.lora.{'down' if kind.startswith('A') else 'up'}.weight"] = v
        old[f"unet.{module}.alpha"] = np.asarray(8.0, np.float32)
    save_file(old, str(tmp_path / "old.safetensors"))
    net = _our_unet(ref)
    parsed = _read(net, tmp_path / "kohya.safetensors")
    assert parsed.format == "kohya" and {a.scale for a in parsed.adapters} == {2.0}
    add_to_weights(net, parsed.adapters, 1.0)
    _check(_run(net, ref), ref, "kohya")
    # the older diffusers names read as the very same adapters
    old_parsed = _read(net, tmp_path / "old.safetensors")
    assert old_parsed.format == "diffusers"
    by_target = {a.target: a for a in parsed.adapters}
    assert len(old_parsed.adapters) == len(by_target)
    for a in old_parsed.adapters:
        k = by_target[a.target]
        assert a.scale == k.scale and np.array_equal(a.down, k.down) and np.array_equal(a.up, k.up)


def test_own_and_mindpet_files_round_trip(peft_reference, tmp_path):
    """Our LoRA layers with peft's values -> save_lora (.ckpt + meta.lora) -> read -> the same
    output; the same tensors under MindPet names (tk_delta / mindpet_delta, no metadata) read
    with the config's alpha."""
    ref = peft_reference
    net = _our_unet(ref)
    parsed = _read(net, ref["file"])
    inject_lora(net, rank=4, alpha=8, paths=[a.target for a in parsed.adapters])
    params = {p.name: p for p in net.get_parameters()}
    for a in parsed.adapters:
        params[a.target + ".tk_delta_lora_a"].set_data(Tensor(a.down))
        params[a.target + ".tk_delta_lora_b"].set_data(Tensor(a.up))
    _check(_run(net, ref), ref, "our LoRA layers")
    path = save_lora(net, tmp_path / "ours.ckpt", base_sha256="ab" * 32)
    assert path.stat().st_size < 128 * 1024
    state, meta = _read_tensors(path)
    assert set(state) == {p.name for p in lora_parameters(net)}
    assert meta["lora"]["rank"] == 4 and meta["lora"]["alpha"] == 8.0 and meta["lora"]["base_sha256"] == "ab" * 32
    assert set(meta["lora"]["targets"]) == {OUR_TARGETS.get(t, t) for t in TARGETS}
    again = _read(net, path)
    assert again.format == "mindpet" and {a.scale for a in again.adapters} == {2.0}
    # MindPet spellings, no metadata: alpha from the config's lora_alpha (4 here -> scale 1)
    renamed = {k.replace("tk_delta_lora_a", "mindpet_delta_lora_A").replace("tk_delta_lora_b", "mindpet_delta_lora_B"): v
               for k, v in state.items()}
    save_atomic(renamed, tmp_path / "mindpet.ckpt")
    mp = _read(net, tmp_path / "mindpet.ckpt")
    assert {a.scale for a in mp.adapters} == {1.0} and len(mp.adapters) == len(again.adapters)
    a0 = {a.target: a for a in again.adapters}
    assert all(np.array_equal(a.up, a0[a.target].up) for a in mp.adapters)


def test_bad_lora_files_one_line(peft_reference, tmp_path):
    from safetensors.numpy import save_file

    ref = peft_reference
    net = _our_unet(ref)
    kohya = _kohya_state(ref["lora"], 8.0)
    cases = {}
    # another base: a wider context (SD-2.x style 1024) -> shape mismatch
    wide = dict(kohya)
    for k in [k for k in wide if "attn2_to_k.lora_down" in k]:
        wide[k] = np.zeros((4, 1024), np.float32)
    cases["wide"] = (wide, "made for another base model: .* other shapes")
    cases["unknown"] = ({"lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight": np.zeros((4, 32), np.float32),
                         "lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight": np.zeros((32, 4), np.float32)},
                        "made for another model: 1 of its 1 layers are not in this one")
    cases["dora"] = ({**kohya, next(iter(kohya)).replace("lora_down.weight", "dora_scale"): np.zeros(4, np.float32)},
                     "DoRA")
    cases["half"] = ({k: v for k, v in kohya.items() if "lora_up" not in k}, "only one of the two")
    cases["none"] = ({"foo.weight": np.zeros(3, np.float32)}, "holds no LoRA tensors")
    for name, (state, pattern) in cases.items():
        save_file(state, str(tmp_path / f"{name}.safetensors"))
        with pytest.raises(LoRAFileError, match=pattern) as exc:
            _read(net, tmp_path / f"{name}.safetensors")
        assert "\n" not in str(exc.value)
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(LoRAFileError, match="cannot be read as safetensors"):
        _read(net, tmp_path / "broken.safetensors")


def test_lora_argument_parsing():
    assert parse_lora_arg("a/b.safetensors") == ("a/b.safetensors", 1.0)
    assert parse_lora_arg("a/b.ckpt:0.5") == ("a/b.ckpt", 0.5)
    assert parse_lora_arg("c:/x.ckpt:-1") == ("c:/x.ckpt", -1.0)
    for bad in ("a.ckpt:x", "a.ckpt:nan", "a.ckpt:inf"):
        with pytest.raises(ValueError, match="finite number"):
            parse_lora_arg(bad)


@pytest.mark.slow
def test_diffusers_peft_parity_graph_mode(peft_reference):
    """The same parity in GRAPH_MODE: separate LoRA layers, then merged (recompiled after each)."""
    ref = peft_reference
    net = _our_unet(ref)
    parsed = _read(net, ref["file"])
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        attach_separate(net, [(parsed.adapters, 1.0)])
        _check(_run(net, ref), ref, "graph separate")
        from mind_diffusion.nn.lora import merge_lora

        merge_lora(net)
        _check(_run(net, ref), ref, "graph merged")
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
