"""Where a GLIDE base or SR model's eps prediction has skill, by scale, and whether it follows its
input's mean colour (see mind_diffusion/glide/diagnostics.py for what the numbers mean).

    python scripts/probe_glide_mean_colour.py --config configs/glide/shapes-base.yaml \\
        --ckpt runs/glide-shapes-base/checkpoints/step_0003888.ckpt --out output/probe_base
    python scripts/probe_glide_mean_colour.py --config configs/glide/shapes-sr.yaml \\
        --ckpt models/glide_shapes/glide_super_res.ckpt --set data.path=data/shapes_glide256

--captions (shapes-world data) probes the text instead: for each --t, the objects' error (in x0 units)
with the true captions and with each caption's places, colours or shapes swapped, or empty
(mind_diffusion/glide/diagnostics.py: caption_probe_rows); writes captions.md and captions.csv. A swap
that costs nothing at every t is a word the model does not use:

    python scripts/probe_glide_mean_colour.py --config configs/glide/shapes-base-v3.yaml \
        --ckpt runs/glide-shapes-base-v3/checkpoints/step_0008000.ckpt --captions --t 200 400 600 800 900

--words needs no model: what the shape and place words are worth to the ideal denoiser on the config's
chain, per --t (mind_diffusion/glide/diagnostics.py: word_value_rows), on --n one-object scenes of the
data's world (its world.json; else the default world); writes words.md and words.csv. The noise levels
where p_true is well below 1 are those where only the word can decide; the caption probe says whether
the model uses it there:

    python scripts/probe_glide_mean_colour.py --config configs/glide/shapes-base-v4.yaml --words --n 48

--denoise (shapes-world data) asks whether the model keeps what x_t still shows: for each --t, the
model's one-call estimate of the clean image from the data's images noised to t (true captions, no
guidance), read by the world's scorer (colour / shape / position rates) and its squared error
(mind_diffusion/glide/diagnostics.py: denoise_probe_rows); writes denoise.md and denoise.csv. Where
--words says x_t still shows the shape, a low shape rate is a model that cannot draw the outline it
is shown:

    python scripts/probe_glide_mean_colour.py --config configs/glide/shapes-base-v5.yaml \
        --ckpt runs/glide-shapes-base/checkpoints/step_0006000.ckpt --denoise --n 48 --t 50 135 237 389 542

The images are the last --n pairs of the config's data at the training size (the SR stage's crops,
with their low-res crops as its input), captioned; for each --t the eps error against the noise
that made x_t, per pixel and of k x k block means scaled by k^2 (1 = no skill at that scale, 0 =
perfect), and the slope of the predicted eps's mean colour against a constant added to the input
(~1 is right near t = T; ~0: blind to the mean colour). Writes probe.md and probe.csv under --out.
"""
import argparse
import csv
import sys

from mind_diffusion.cli import run_cli


def write_table(out, name: str, header: str, rows: list) -> None:
    """``out/name.md`` (``header`` and the rows as a Markdown table) and ``out/name.csv`` (the rows), and the
    report on stdout."""
    from mind_diffusion.glide.diagnostics import rows_markdown

    md = header + rows_markdown(rows)
    (out / f"{name}.md").write_text(md, encoding="utf-8")
    with open(out / f"{name}.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(md)
    print(f"wrote {out / (name + '.md')} and {name}.csv")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the stage's training config (configs/glide/*.yaml)")
    p.add_argument("--ckpt", help="a training checkpoint (checkpoints/step_*.ckpt) or an export (not with --words)")
    p.add_argument("--weights", default="ema", choices=("ema", "raw"),
                   help="a training checkpoint's EMA copy (default) or its raw weights")
    p.add_argument("--n", type=int, default=32, help="images probed (the data's last N pairs)")
    p.add_argument("--t", type=int, nargs="+", default=[50, 300, 600, 850, 970, 995], help="timesteps")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--captions", action="store_true",
                   help="probe what the model reads from the captions (places, colours, shapes swapped; "
                        "shapes-world captions, base stage)")
    p.add_argument("--denoise", action="store_true",
                   help="how well the model's one-call clean-image estimate keeps the data's colours, shapes and "
                        "places, per --t (shapes-world captions)")
    p.add_argument("--words", action="store_true",
                   help="no model: what the shape and place words are worth to the ideal denoiser, per --t")
    p.add_argument("--out", default="output/glide_probe", help="output folder (created)")
    p.add_argument("--set", nargs="*", action="extend", default=[], help="config overrides, e.g. data.path=DIR")
    args = p.parse_args(argv)

    def job():
        import mindspore as ms
        import numpy as np

        from mind_diffusion.checkpoint.io import read_checkpoint
        from mind_diffusion.config import load_config
        from mind_diffusion.glide import training as T
        from mind_diffusion.glide.checkpoint import load_glide_checkpoint
        from mind_diffusion.glide.diagnostics import probe_rows, select_weights
        from mind_diffusion.glide.model import build_glide_base, build_glide_sr
        from mind_diffusion.runtime import init_runtime
        from mind_diffusion.utils.images import check_output_dir

        if args.n < 1:
            raise ValueError(f"--n must be >= 1, got {args.n}")
        bad = [t for t in args.t if not 0 <= t < 1000]
        if bad:
            raise ValueError(f"--t {bad[0]} is outside the 1000-step chain: give timesteps in 0..999")
        if sum((args.captions, args.denoise, args.words)) > 1:
            raise ValueError("--captions, --denoise and --words are separate probes: give one of them")
        cfg = load_config(args.config, args.set, T.glide_train_config_defaults())
        stage = T.stage_of(cfg)
        if args.words:
            return word_values(cfg, stage)
        if not args.ckpt:
            raise ValueError("--ckpt is needed (the model to probe); only --words runs without one")
        if args.captions and stage != "base":
            raise ValueError("--captions probes a base model (its captions decide the picture); this config is "
                             "the super-resolution stage's")
        ncfg, sched, size = T.net_config(cfg), T.schedule_for(cfg), T.train_size(cfg)
        init_runtime("CPU", "pynative", seed=0)
        state, what = select_weights(read_checkpoint(args.ckpt, "GLIDE checkpoint"), args.weights)
        net = (build_glide_base if stage == "base" else build_glide_sr)(ncfg, deferred_init=True)
        load_glide_checkpoint(net, state, stage)
        net.set_train(False)
        tok = T._tokenizer(cfg, None)
        pairs, _ = T.read_pairs(cfg)
        image_size = int(ncfg["image_size"])
        low = int(cfg.data.low_res_size) if stage == "sr" else None
        data = T.GlideImageText(pairs[-args.n:], tok, (image_size,) if low is None else (image_size, low))
        if len(data) < args.n:
            raise ValueError(f"{len(data)} usable pairs at the end of the data, fewer than --n {args.n}")
        src = T.GlideBatches(data, tok.end_token, int(ncfg["text_ctx"]), args.n, image_size, low,
                             text_drop_p=0.0, seed=args.seed, shuffle=False, crop_size=cfg.data.crop_size)
        batch = src[0]
        x0, tokens, mask = batch[0], ms.Tensor(batch[1]), ms.Tensor(batch[2])
        cond = () if low is None else (ms.Tensor(batch[5]),)  # the SR stage's low-res input

        def eps_fn(x, t):
            return net(ms.Tensor(x), ms.Tensor(np.full(len(x), t, np.int32)), *cond, tokens, mask).asnumpy()

        out = check_output_dir(args.out)
        if args.captions:
            return caption_probe(net, tok, ncfg, x0, data, sched, what, out)
        if args.denoise:
            from mind_diffusion.glide.diagnostics import denoise_probe_rows

            captions = [c[0] for c in data.captions[:len(x0)]]
            rows = denoise_probe_rows(eps_fn, x0, captions, sched.alphas_cumprod, args.t, seed=args.seed)
            return write_table(out, "denoise", f"# What the model keeps of what x_t shows\n\n{stage} model, "
                               f"{args.ckpt} ({what}); {len(x0)} images of {args.config}'s data at {size} px, true "
                               f"captions, no guidance.\n\nThe one-call estimate of the clean image, clip((x_t - "
                               f"sqrt(1 - abar) eps) / sqrt(abar)), read by the shapes-world scorer (rates of colour, "
                               f"shape and position right) and its squared error against the image (mse: every pixel; "
                               f"mse_objects: the objects' pixels).\n\n", rows)
        pools = sorted({k for k in (4, 8, size) if size % k == 0})
        rows = probe_rows(eps_fn, x0, sched.alphas_cumprod, args.t, pools, seed=args.seed)
        write_table(out, "probe", f"# Eps skill by scale and mean-colour slope\n\n{stage} model, {args.ckpt} "
                    f"({what}); {args.n} images of {cfg.data.path} at {size} px.\n\npix / poolK: squared eps error "
                    f"per pixel / of KxK block means x K^2 (1 = no skill, 0 = perfect); slope: d mean(eps) / d "
                    f"(constant added to x_t), ~1 right near t = T, ~0 blind.\n\n", rows)

    def caption_probe(net, tok, ncfg, x0, data, sched, what, out):
        import mindspore as ms
        import numpy as np

        from mind_diffusion.glide.diagnostics import caption_probe_rows
        from mind_diffusion.text.sentencepiece_tokenizer import padded_tokens_and_mask

        ctx = int(ncfg["text_ctx"])

        def eps_fn(x, t, captions):
            rows = [padded_tokens_and_mask(tok.encode(c) if c else [], ctx, tok.end_token) for c in captions]
            tokens = ms.Tensor(np.stack([r[0] for r in rows]))
            mask = ms.Tensor(np.stack([r[1] for r in rows]))
            return net(ms.Tensor(x), ms.Tensor(np.full(len(x), t, np.int32)), tokens, mask).asnumpy()

        captions = [c[0] for c in data.captions[:len(x0)]]
        rows = caption_probe_rows(eps_fn, x0, captions, sched.alphas_cumprod, args.t, seed=args.seed)
        write_table(out, "captions", f"# What the base model reads from its captions\n\n{args.ckpt} ({what}); "
                    f"{len(x0)} images of {args.config}'s data.\n\nThe objects' squared error in x0 units (eps error "
                    f"x (1 - abar) / abar, over the pixels unlike the border colour) with the true captions and with "
                    f"every place, object colour or shape swapped, or the caption empty. A swap costing nothing: a "
                    f"word not used at that t.\n\n", rows)

    def word_values(cfg, stage):
        import json
        from pathlib import Path

        from mind_diffusion.glide import training as T
        from mind_diffusion.glide.diagnostics import word_alternatives, word_value_rows
        from mind_diffusion.shapes.world import ShapesWorld
        from mind_diffusion.utils.images import check_output_dir

        if stage != "base":
            raise ValueError("--words measures a base model's chain (its captions decide the picture); this config "
                             "is the super-resolution stage's")
        size = T.train_size(cfg)
        meta = Path(str(cfg.data.path)).expanduser() / "world.json"
        settings = json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else {}
        keep = ("seed", "split", "antialias", "size_range", "max_offset", "max_rotation", "default_background_prob")
        world = ShapesWorld(image_size=size, two_shape_prob=0.0, **{k: settings[k] for k in keep if k in settings})
        scenes = [world.sample_scene(i)[0] for i in range(args.n)]
        alts = {w: [word_alternatives(s, w, size, world.antialias) for s in scenes] for w in ("shape", "place")}
        abar = T.schedule_for(cfg).alphas_cumprod
        per = {w: word_value_rows(a, abar, args.t, seed=args.seed) for w, a in alts.items()}
        rows = [{"t": r["t"], "abar": r["abar"], **{f"{w}_{k}": per[w][i][k] for w in per for k in ("p_true", "excess")}}
                for i, r in enumerate(per["shape"])]
        out = check_output_dir(args.out)
        write_table(out, "words", f"# What the shape and place words are worth to the ideal denoiser\n\n{args.config}'s "
                    f"chain (snr_scale {cfg.diffusion.snr_scale}); {args.n} one-object scenes of "
                    f"{meta if meta.is_file() else 'the default world'} at {size} px, each rendered with every shape "
                    f"(and every place), the rest equal.\n\np_true: the posterior of the true value given x_t (1: x_t "
                    f"shows it; 1/4 for shapes, 1/5 for places: nothing); excess: the squared x0 error (per pixel and "
                    f"channel, over the renders' objects) of a denoiser that knows everything but the word.\n\n", rows)

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
