"""The built-in shapes-world GLIDE standing in for missing official Taichu-GLIDE files
(mind_diffusion/glide/builtin.py): the resolver's choice (official, built-in or one error), the
launcher's one line and images, no stand-in for a folder the user named, the original
run_infer.sh settings kept off the built-in's config, the FID comparison's GLIDE row falling
back to the built-in, the web page offering it. The built-in folders are made here: the real
shapes-sp.model and config.yaml of models/glide_shapes, random checkpoints in the released layout."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import captured_error, one_line_error, run_script
from glide_tiny import BUILTIN_REAL, make_builtin_glide_dir

from mind_diffusion.glide import builtin as B
from mind_diffusion.glide.config import GLIDE_URL

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "一个红色的圆形在左边"
OFFICIAL_PRESENT = (ROOT / "models" / "glide" / "glide_gen.ckpt").is_file()
OFFICIAL = ("cog-pretrain.model", "glide_gen.ckpt", "glide_super_res.ckpt", "srgan.ckpt")


def _touch(folder: Path, *names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"stand-in")
    return folder


def _load_script(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory whose models/glide (the default official folder) is empty, and a
    stand-in built-in (real config.yaml and shapes-sp.model; base and SR files, no SRGAN) named
    by GLIDE_BUILTIN."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "glide").mkdir(parents=True)
    bi = _touch(tmp_path / "bi", "glide_gen.ckpt", "glide_super_res.ckpt")
    for f in ("config.yaml", "shapes-sp.model"):
        shutil.copy(BUILTIN_REAL / f, bi / f)
    monkeypatch.setenv(B.BUILTIN_ENV, str(bi))
    return tmp_path


@pytest.fixture(scope="module")
def tiny_builtin(tmp_path_factory):
    return make_builtin_glide_dir(tmp_path_factory.mktemp("glide_builtin"))


def test_resolver_official_builtin_or_one_error(workdir, monkeypatch):
    from mind_diffusion.checkpoint.io import CheckpointError
    from mind_diffusion.config import load_config

    bi = workdir / "bi"
    shipped = load_config(BUILTIN_REAL / "config.yaml", (), B.glide_config_defaults())
    # no official file; the built-in has the base and SR stages: it stands in up to 256 px
    launcher = ["sampling.num_images_per_prompt=7", "sampling.uncond=random", "sampling.guidance_scale=9"]
    src = B.load_glide_source(stages=256, official_overrides=launcher, overrides=["sampling.seed=11"])
    assert src.builtin and src.folder == bi and src.config_path == bi / "config.yaml"
    assert src.notice == ("official Taichu-GLIDE checkpoints not found in models/glide (cog-pretrain.model, "
                          "glide_gen.ckpt, glide_super_res.ckpt); using the built-in shapes-world GLIDE "
                          "(bi): it knows only the shapes world")  # paths shown from the working directory
    s = src.cfg.sampling  # the built-in's own sampling defaults; --set applies to it, --official_set does not
    assert (s.uncond, s.guidance_scale, s.num_images_per_prompt, s.seed) == \
        (shipped.sampling.uncond, shipped.sampling.guidance_scale, shipped.sampling.num_images_per_prompt, 11)
    assert str(src.cfg.model.family) == B.BUILTIN_FAMILY and s.uncond == "empty"
    tok, ckpts = src.checked_files()
    assert tok == bi / "shapes-sp.model" and ckpts == {64: bi / "glide_gen.ckpt", 256: bi / "glide_super_res.ckpt"}
    # the built-in lacks the SRGAN stage: all three stages (the config's default) give one error
    with pytest.raises(CheckpointError) as exc:
        B.load_glide_source()
    msg = str(exc.value)
    assert msg.startswith(f"GLIDE checkpoint not found: models/glide lacks {', '.join(OFFICIAL)}")
    assert GLIDE_URL in msg and "not available either (bi lacks srgan.ckpt" in msg and "\n" not in msg
    # the official files there: they are used, with the launcher's settings
    _touch(workdir / "models" / "glide", "glide_gen.ckpt", "cog-pretrain.model")
    src = B.load_glide_source(stages=64, official_overrides=launcher)
    assert not src.builtin and not src.notice and src.folder.resolve() == (workdir / "models" / "glide").resolve()
    assert (src.cfg.sampling.num_images_per_prompt, src.cfg.sampling.uncond) == (7, "random")
    # ... but only for the stages they cover: 256 px needs glide_super_res.ckpt
    src = B.load_glide_source(stages=256)
    assert src.builtin and "models/glide (glide_super_res.ckpt); using the built-in" in src.notice


@pytest.mark.parametrize("how", ["ckpt_path", "gen_ckpt", "set", "config", "english"])
def test_a_named_folder_or_file_is_never_replaced(workdir, how):
    empty = workdir / "named"
    empty.mkdir()
    cfg = workdir / "my.yaml"
    cfg.write_text(f"checkpoint: {{ckpt_path: {empty}}}\n", encoding="utf-8")
    kw = {"ckpt_path": dict(ckpt_path=empty), "gen_ckpt": dict(names={"gen_ckpt": "mine.ckpt"}),
          "set": dict(overrides=[f"checkpoint.ckpt_path={empty}"]), "config": dict(config=cfg),
          "english": dict(is_chinese=False)}[how]
    src = B.load_glide_source(stages=64, **kw)
    assert not src.builtin and not src.notice
    with pytest.raises((FileNotFoundError, RuntimeError), match="not found"):
        src.checked_files()


def test_paths_resolve_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(B.BUILTIN_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert B.builtin_dir() == ROOT / "models" / "glide_shapes"
    assert B.resolve_ckpt_dir("models/glide_shapes", BUILTIN_REAL / "config.yaml") == BUILTIN_REAL
    assert B.resolve_config_path("configs/glide/infer.yaml") == ROOT / "configs/glide/infer.yaml"
    (tmp_path / "mine" / "ck").mkdir(parents=True)  # relative to the config's own folder
    assert B.resolve_ckpt_dir("ck", tmp_path / "mine" / "c.yaml") == tmp_path / "mine" / "ck"
    monkeypatch.setenv(B.BUILTIN_ENV, str(tmp_path / "elsewhere"))
    assert B.builtin_dir() == tmp_path / "elsewhere"


@pytest.mark.skipif(OFFICIAL_PRESENT, reason="models/glide holds the official files: nothing to stand in for")
def test_launcher_prompt_runs_the_builtin_with_its_own_defaults(tiny_builtin, tmp_path):
    """bash scripts/run_glide_infer.sh "<prompt>": the one line, the built-in's sampling defaults
    (uncond, scale, images per prompt) over the launcher's, an explicit flag over both."""
    from mind_diffusion.checkpoint.io import file_sha256
    from mind_diffusion.config import load_config
    from mind_diffusion.utils.images import read_png_parameters

    out = tmp_path / "out"
    p = run_script("run_glide_infer.sh", PROMPT, "--stages", 64, "--denoise_steps", 3, "--device_target", "CPU",
                   env={B.BUILTIN_ENV: str(tiny_builtin), "OUTPUT": str(out)}, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [ln for ln in p.stdout.splitlines() if "official Taichu-GLIDE checkpoints not found" in ln]
    assert lines == [f"official Taichu-GLIDE checkpoints not found in models/glide ({', '.join(OFFICIAL[:2])}); "
                     f"using the built-in shapes-world GLIDE ({tiny_builtin}): it knows only the shapes world"]
    s = load_config(tiny_builtin / "config.yaml", (), B.glide_config_defaults()).sampling
    pngs = sorted((out / "samples").iterdir())
    assert [f.name for f in pngs] == [f"{k:05d}-{PROMPT}-16.png" for k in range(int(s.num_images_per_prompt))]
    meta = read_png_parameters(pngs[1])
    assert meta["prompt"] == PROMPT and meta["model"] == "glide-shapes" and meta["seed"] == int(s.seed) + 1
    assert (meta["uncond"], meta["guidance_scale"], meta["pics_generated"]) == \
        (s.uncond, s.guidance_scale, s.num_images_per_prompt)
    assert meta["denoise_steps"] == 3 and meta["stage"] == 64
    assert meta["base_checkpoint_sha256"] == file_sha256(tiny_builtin / "glide_gen.ckpt")
    assert meta["tokenizer"] == "shapes-sp.model"
    assert meta["tokenizer_sha256"] == file_sha256(BUILTIN_REAL / "shapes-sp.model")
    from PIL import Image

    img = np.asarray(Image.open(pngs[0]))
    assert img.shape == (16, 16, 3) and img.std() > 0


def test_named_folder_missing_or_nothing_at_all_is_one_error(workdir, tiny_builtin, capsys, monkeypatch):
    monkeypatch.delenv("MIND_DIFFUSION_DEBUG", raising=False)
    main = _load_script("glide_txt2img")
    out = workdir / "out"
    # a folder the user named lacks the files: its error, even with a complete built-in there
    monkeypatch.setenv(B.BUILTIN_ENV, str(tiny_builtin))
    captured_error(capsys, main(["--prompt", PROMPT, "--ckpt_path", str(workdir / "named"), "--output_path",
                                 str(out)]), "tokenizer model not found", "named")
    # neither the official files nor a built-in: one line naming the download and the built-in's absence
    monkeypatch.setenv(B.BUILTIN_ENV, str(workdir / "none"))
    line = captured_error(capsys, main(["--prompt", PROMPT, "--output_path", str(out)]),
                          "GLIDE checkpoint not found: models/glide lacks", GLIDE_URL,
                          "not available either (none lacks config.yaml")
    assert B.BUILTIN_ENV in line
    assert not out.exists()


@pytest.mark.skipif(OFFICIAL_PRESENT, reason="models/glide holds the official files")
def test_launcher_ckpt_path_is_never_replaced(tiny_builtin, tmp_path):
    p = run_script("run_glide_infer.sh", PROMPT, env={B.BUILTIN_ENV: str(tiny_builtin), "CKPT_PATH": str(tmp_path),
                                                      "OUTPUT": str(tmp_path / "out")}, timeout=300)
    one_line_error(p, "tokenizer model not found", str(tmp_path))
    assert "built-in" not in p.stdout and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- FID comparison row
def test_fid_glide_row_falls_back_to_the_builtin(tiny_builtin, tmp_path, monkeypatch):
    from mind_diffusion.evaluation import compare_config as CC
    from mind_diffusion.evaluation import generators as G

    monkeypatch.setenv(B.BUILTIN_ENV, str(tiny_builtin))
    text = (f"generators:\n  glide: {{kind: glide, label: Taichu-GLIDE, ckpt_path: {tmp_path / 'none'}, prompt: 马, "
            f"stages: 256, fallback: builtin, reference: auto}}\n")
    (tmp_path / "c.yaml").write_text(text, encoding="utf-8")
    cfg = CC.load_compare_config(tmp_path / "c.yaml")
    gen = G.build_generator("glide", cfg.generators.glide, None)
    assert gen.fallback and gen.demo and gen.prompt == PROMPT  # the world's prompt, not the row's 马
    assert gen.label == "GLIDE built-in (shapes world) 256px (instead of Taichu-GLIDE)"
    assert gen.note == f"fallback: GLIDE gen_ckpt not found: {tmp_path / 'none' / 'glide_gen.ckpt'}"
    assert gen.auto_reference["kind"] == "shapes" and gen.auto_reference["image_size"] == 32
    assert gen.pipe.max_stage == 256 and str(gen.pipe.cfg.model.family) == "glide-shapes"
    assert gen.resolved["guidance_scale"] == float(gen.pipe.cfg.sampling.guidance_scale)
    assert gen.checkpoint == str(tiny_builtin / "glide_gen.ckpt")
    # without the fallback: skipped with the reason; with no built-in either: both reasons
    cfg.generators.glide.fallback = "skip"
    with pytest.raises(G.SkipRow, match="GLIDE gen_ckpt not found"):
        G.build_generator("glide", cfg.generators.glide, None)
    cfg.generators.glide.fallback = "builtin"
    monkeypatch.setenv(B.BUILTIN_ENV, str(tmp_path / "nothing"))
    with pytest.raises(G.SkipRow, match="built-in fallback also unavailable: GLIDE config not found"):
        G.build_generator("glide", cfg.generators.glide, None)


def test_fid_quick_config_has_the_builtin_glide_row():
    from mind_diffusion.evaluation import compare_config as CC

    cfg = CC.load_compare_config(ROOT / "configs" / "fid" / "builtin-quick.yaml")
    g = cfg.generators.glide_shapes
    assert g.kind == "glide" and "built-in" in g.label and g.reference == "auto" and int(g.stages) == 64
    assert (ROOT / g.config).resolve() == (BUILTIN_REAL / "config.yaml").resolve()
    report = CC.load_compare_config(ROOT / "configs" / "fid" / "report-horse.yaml")
    assert report.generators.glide.fallback == "builtin"


def test_fid_builtin_row_generates_real_images(tmp_path, monkeypatch):
    """The fallback row's adapter on a tiny built-in (2 base steps): two images equal those of the
    pipeline called with the built-in config's settings."""
    from mind_diffusion.evaluation import compare_config as CC
    from mind_diffusion.evaluation import generators as G
    from mind_diffusion.glide.pipeline import GlidePipeline

    tiny_builtin = make_builtin_glide_dir(tmp_path / "bi", stages=(64,), num_inference_steps=2)
    monkeypatch.setenv(B.BUILTIN_ENV, str(tiny_builtin))
    (tmp_path / "c.yaml").write_text(f"generators:\n  g: {{kind: glide, ckpt_path: {tmp_path}, prompt: 马, "
                                     f"fallback: builtin}}\n", encoding="utf-8")
    gen = G.build_generator("g", CC.load_compare_config(tmp_path / "c.yaml").generators.g, None)
    got = gen.generate(0, 2, 3)
    assert got.shape == (2, 16, 16, 3) and got.dtype == np.uint8 and got.std() > 0
    # the images of the built-in's own settings (its config's scale, steps and unconditional branch)
    s = GlidePipeline.load_config(tiny_builtin / "config.yaml").sampling
    want = gen.pipe(PROMPT, num_images_per_prompt=2, seed=3, stages=64, guidance_scale=float(s.guidance_scale),
                    num_inference_steps=int(s.num_inference_steps), uncond=str(s.uncond), progress=False)[64]
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- web page
def test_webui_offers_the_builtin(tiny_builtin, tmp_path):
    from mind_diffusion.webui.models import find_models

    models = tmp_path / "models"
    models.mkdir()
    (models / "glide_shapes").symlink_to(tiny_builtin)
    found = find_models(models, ROOT)
    assert [(m.label, m.stages, m.config, m.ckpt) for m in found["glide"]] == [
        ("glide_shapes (built-in shapes-world GLIDE)", (64, 256, 1024), models / "glide_shapes" / "config.yaml",
         models / "glide_shapes")]
    assert found["ldm"] == [] and found["ddpm"] == []
    _touch(models / "glide", "glide_gen.ckpt", "cog-pretrain.model")  # the official files first
    assert [m.label for m in find_models(models, ROOT)["glide"]] == [
        "glide (Taichu-GLIDE)", "glide_shapes (built-in shapes-world GLIDE)"]


def test_webui_generates_with_the_builtin(tiny_builtin, tmp_path):
    """The GLIDE tab's engine on the built-in: its own config's files and defaults, and a command
    line that names its config."""
    import shlex

    from mind_diffusion.utils.images import read_png_parameters
    from mind_diffusion.webui.engine import Engine

    models = tmp_path / "models"
    models.mkdir()
    (models / "glide_shapes").symlink_to(tiny_builtin)
    eng = Engine(ROOT, models, tmp_path / "out", device_target="CPU", mode="pynative")
    (label,) = eng.labels("glide")
    updates = list(eng.glide(label, PROMPT, "", 2, 3.0, 4, 1, 64))
    assert updates[-1].done and [p.name for p in updates[-1].paths] == [f"00000-{PROMPT}-16.png"]
    meta = read_png_parameters(updates[-1].paths[0])
    assert (meta["model"], meta["uncond"], meta["seed"], meta["denoise_steps"]) == ("glide-shapes", "empty", 4, 2)
    cmd = shlex.split(updates[-1].command)
    flags = dict(zip(cmd[2::2], cmd[3::2]))
    assert flags["--config"] == str(models / "glide_shapes" / "config.yaml")
    assert flags["--ckpt_path"] == str(models / "glide_shapes") and flags["--stages"] == "64"


@pytest.mark.slow
@pytest.mark.skipif(OFFICIAL_PRESENT, reason="models/glide holds the official files")
def test_shipped_config_runs_all_stages(tmp_path):
    """models/glide_shapes/config.yaml's real networks (random weights in the released layout):
    the launcher with only a prompt writes the 64, 256 and 1024 px images."""
    bi = make_builtin_glide_dir(tmp_path / "bi", tiny=False)
    out = tmp_path / "out"
    p = run_script("run_glide_infer.sh", PROMPT, "--pics_generated", 1, "--device_target", "CPU",
                   env={B.BUILTIN_ENV: str(bi), "OUTPUT": str(out)}, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "using the built-in shapes-world GLIDE" in p.stdout
    assert sorted(f.name for f in (out / "samples").iterdir()) == [
        f"00000-{PROMPT}-{s}.png" for s in (1024, 256, 64)]


def test_eval_first_renders_scores_the_later_stages_alone(tmp_path, capsys):
    """scripts/eval_glide_shapes.py --first renders: no base checkpoint is read; the 64 px column is the
    world's renders (the SR stage's training pairs: renders at the SR size reduced to the base size) with
    their own captions, each later stage scored and compared with it; the config's super_res_strength is
    used and recorded. --stages 64 with it is one clear line."""
    import csv

    from mind_diffusion.glide.training import center_crop_arr
    from mind_diffusion.shapes.scorer import score
    from mind_diffusion.shapes.world import ShapesWorld
    from scripts.eval_glide_shapes import main

    bi = make_builtin_glide_dir(tmp_path / "bi", stages=(256, 1024))
    assert not (bi / "glide_gen.ckpt").exists()
    out = tmp_path / "eval"
    rc = main(["--model", str(bi), "--first", "renders", "--stages", "1024", "--n_heldout", "2", "--n_seen", "1",
               "--per_prompt", "1", "--seed", "5", "--out", str(out), "--device_target", "CPU", "--mode", "pynative",
               "--set", "sampling.super_res_strength=0.5"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    rows = list(csv.DictReader(open(out / "adherence.csv", encoding="utf-8")))
    for split, n, got in (("heldout", 2, rows[:2]), ("train", 1, rows[2:])):
        world = ShapesWorld(image_size=32, seed=5, antialias=True, split=split)
        for i, r in enumerate(got):
            img, cap, _ = world.sample(i)
            assert r["split"] == split and r["prompt"] == cap
            want = score(center_crop_arr(img, 16), cap)
            assert r["colour@64"] == str(bool(want["colour"])) and r["shape@64"] == str(bool(want["shape"]))
            assert {"same@256", "same@1024"} <= set(r)
    md = (out / "adherence.md").read_text(encoding="utf-8")
    assert '"first": "renders"' in md and '"super_res_strength": 0.5' in md and "(renders at 64 px)" in md
    assert (out / "grid_heldout_1024.png").is_file()
    capsys.readouterr()
    rc = main(["--model", str(bi), "--first", "renders", "--stages", "64", "--out", str(tmp_path / "e2"),
               "--device_target", "CPU", "--mode", "pynative"])
    captured_error(capsys, rc, "--first renders evaluates the SR / SRGAN stages")


def test_shipped_sr_model_loads_strictly_and_keeps_held_out_renders(tmp_path, capsys):
    """models/glide_shapes/glide_super_res.ckpt (the shipped SR stage): strict load into the network of
    the shipped config, and from the 64 px version of two held-out renders, at the config's
    super_res_strength, its 256 px outputs get the scorer's 64 px verdicts (the issue's bar is >= 95%;
    the model card's evaluation has 32 of 32)."""
    import csv
    import json

    from mind_diffusion.glide.checkpoint import load_glide_checkpoint
    from mind_diffusion.glide.model import build_glide_sr
    from scripts.eval_glide_shapes import main

    record = json.loads((BUILTIN_REAL / "package.json").read_text(encoding="utf-8"))
    assert record["glide_super_res.ckpt"]["bytes"] == (BUILTIN_REAL / "glide_super_res.ckpt").stat().st_size
    cfg = B.read_yaml(BUILTIN_REAL / "config.yaml")
    load_glide_checkpoint(build_glide_sr(dict(cfg["model"]["sr"])), BUILTIN_REAL / "glide_super_res.ckpt", "sr")
    out = tmp_path / "eval"
    rc = main(["--model", str(BUILTIN_REAL), "--first", "renders", "--stages", "256", "--n_heldout", "2",
               "--n_seen", "0", "--per_prompt", "1", "--out", str(out), "--device_target", "CPU"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    rows = list(csv.DictReader(open(out / "adherence.csv", encoding="utf-8")))
    assert len(rows) == 2
    for r in rows:
        assert r["colour@64"] == r["shape@64"] == r["position@64"] == "True", r
        assert r["same@256"] == "True", r


def test_shipped_base_model_loads_strictly_and_reproduces_its_card(tmp_path, capsys):
    """models/glide_shapes/glide_gen.ckpt (the shipped base): strict load into the shipped config's network;
    the first images of the model card's evaluation (2 held-out prompts x 2 seeds at the default settings,
    `eval/adherence.csv`) come out with the same 64 px verdicts (all 4 on the machine that wrote the card; at
    most one image may differ elsewhere), and the model follows the colour of most of them (chance: 1 in 8)."""
    import csv
    import json

    from mind_diffusion.glide.checkpoint import load_glide_checkpoint
    from mind_diffusion.glide.model import build_glide_base
    from scripts.eval_glide_shapes import main

    record = json.loads((BUILTIN_REAL / "package.json").read_text(encoding="utf-8"))
    assert record["glide_gen.ckpt"]["bytes"] == (BUILTIN_REAL / "glide_gen.ckpt").stat().st_size
    cfg = B.read_yaml(BUILTIN_REAL / "config.yaml")
    load_glide_checkpoint(build_glide_base(dict(cfg["model"]["base"])), BUILTIN_REAL / "glide_gen.ckpt", "base")
    card = list(csv.DictReader(open(BUILTIN_REAL / "eval" / "adherence.csv", encoding="utf-8")))[:4]
    out = tmp_path / "eval"
    rc = main(["--model", str(BUILTIN_REAL), "--stages", "64", "--n_heldout", "2", "--n_seen", "0",
               "--per_prompt", "2", "--batch", "4", "--out", str(out), "--device_target", "CPU"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    rows = list(csv.DictReader(open(out / "adherence.csv", encoding="utf-8")))
    assert [(r["prompt"], r["seed"]) for r in rows] == [(r["prompt"], r["seed"]) for r in card]
    # bit-identical on the machine that wrote the card; one image's blob may tip a verdict elsewhere
    keys = ("colour@64", "shape@64", "position@64")
    differ = [i for i, (r, c) in enumerate(zip(rows, card)) if any(r[k] != c[k] for k in keys)]
    assert len(differ) <= 1, (differ, rows, card)
    assert sum(r["colour@64"] == "True" for r in rows) >= 3


def test_eval_renders_from_starts_the_shipped_base_at_a_true_image(tmp_path, capsys):
    """scripts/eval_glide_shapes.py --renders_from T: the base starts at its grid step nearest T from the
    prompts' own scenes rendered and noised to that level. From t ~ 68 the shipped base keeps what the
    render shows (the card: 47 of 48 held-out scenes); the step taken is recorded; with --first renders the
    flag is one clear line."""
    import csv

    from scripts.eval_glide_shapes import main

    out = tmp_path / "eval"
    rc = main(["--model", str(BUILTIN_REAL), "--stages", "64", "--n_heldout", "2", "--n_seen", "0", "--per_prompt", "1",
               "--renders_from", "70", "--out", str(out), "--device_target", "CPU"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    rows = list(csv.DictReader(open(out / "adherence.csv", encoding="utf-8")))
    assert len(rows) == 2 and all(r["all@64"] == "True" for r in rows), rows
    md = (out / "adherence.md").read_text(encoding="utf-8")
    assert '"renders_from_t": 68' in md and "(from their renders noised to t = 68)" in md
    capsys.readouterr()
    rc = main(["--model", str(BUILTIN_REAL), "--first", "renders", "--renders_from", "70", "--out", str(tmp_path / "e2"),
               "--device_target", "CPU"])
    captured_error(capsys, rc, "--renders_from is a timestep in (0, 1000)")
