"""The page (gradio Blocks): Text to image, Image editing, GLIDE, DDPM and PNG info tabs over an
:class:`~mind_diffusion.webui.engine.Engine`. Every generation runs through one queue slot
(``concurrency_id="generate"``, limit 1), so a second tab waits and sees its place; Cancel and
Refresh bypass the queue."""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from ..cli import user_error_types  # noqa: E402
from .engine import Engine, page_message  # noqa: E402
from .models import GLIDE_FILES, GLIDE_TOKENIZER  # noqa: E402
from .pnginfo import form_values  # noqa: E402
from ..utils.edit_inputs import AUGS  # noqa: E402

SAMPLERS = ["dpm_solver", "plms", "ddim", "ddpm"]
GLIDE_URL = "https://download.mindspore.cn/toolkits/minddiffusion/Taichu-GLIDE/"
CSS = """
#t2i_command textarea, #edit_command textarea, #ddpm_command textarea, #glide_command textarea {
  font-family: monospace; }
"""


def page_error(exc: BaseException) -> gr.Error:
    return gr.Error(page_message(exc), duration=None, print_exception=False)


def _defaults(engine: Engine, label):
    """The model's sampling defaults (sampler, steps, scale, width, height, seed)."""
    from ..config import load_config
    from ..ldm.config import ldm_config_defaults

    try:
        s = load_config(engine.entry("ldm", label).config, (), ldm_config_defaults()).sampling
    except user_error_types():
        return None
    return (str(s.sampler), int(s.num_inference_steps), float(s.guidance_scale), int(s.width),
            int(s.height), int(s.seed))


def _glide_defaults(engine: Engine, label):
    """A GLIDE model's stages and sampling defaults (base steps, scale), or None."""
    from ..config import load_config
    from ..glide.config import glide_config_defaults

    try:
        entry = engine.entry("glide", label)
        s = load_config(entry.config, (), glide_config_defaults()).sampling
    except user_error_types():
        return None
    return [str(st) for st in entry.stages], int(s.num_inference_steps), float(s.guidance_scale)


def blend_line(engine: Engine, label, mode: str) -> str:
    """The one-line note that inpainting with this model runs by blended latent diffusion."""
    from ..cli.ldm import blend_note
    from ..config import load_config
    from ..ldm.config import ldm_config_defaults

    try:
        entry = engine.entry("ldm", label)
        note = blend_note(load_config(entry.config, (), ldm_config_defaults()), entry.ckpt, mode)
    except user_error_types():
        return ""
    return (note or "").replace("note: ", "*Note:* ", 1)


def sampling_fields(prefix: str, d) -> tuple:
    """The sampling settings of the latent-diffusion tabs (elem ids ``<prefix>_steps`` ...):
    sampler, steps, scale, width, height, seed, batch count, batch size, and the Random seed,
    Generate and Cancel buttons."""
    with gr.Row():
        sampler = gr.Dropdown(SAMPLERS, value=d[0], label="Sampler", elem_id=f"{prefix}_sampler")
        steps = gr.Number(d[1], precision=0, label="Sampling steps", elem_id=f"{prefix}_steps")
        scale = gr.Number(d[2], label="CFG scale", step=0.5, elem_id=f"{prefix}_scale")
    with gr.Row():
        width = gr.Number(d[3], precision=0, label="Width", elem_id=f"{prefix}_width")
        height = gr.Number(d[4], precision=0, label="Height", elem_id=f"{prefix}_height")
        seed = gr.Number(d[5], precision=0, label="Seed (-1: random)", elem_id=f"{prefix}_seed")
    with gr.Row():
        count = gr.Number(1, precision=0, label="Batch count", elem_id=f"{prefix}_count")
        size = gr.Number(1, precision=0, label="Batch size", elem_id=f"{prefix}_size")
        dice = gr.Button("Random seed", elem_id=f"{prefix}_random")
    with gr.Row():
        go = gr.Button("Generate", variant="primary", elem_id=f"{prefix}_generate")
        stop = gr.Button("Cancel", variant="stop", elem_id=f"{prefix}_cancel")
    return sampler, steps, scale, width, height, seed, count, size, dice, go, stop


def result_fields(prefix: str) -> tuple:
    """Gallery, status line and the reproducing command line of a latent-diffusion tab."""
    gallery = gr.Gallery(label="Images", elem_id=f"{prefix}_gallery", columns=4, height=360,
                         object_fit="contain", format="png", buttons=["download", "fullscreen"])
    status = gr.Markdown(elem_id=f"{prefix}_status")
    command = gr.Textbox(label="Command line that reproduces these images", elem_id=f"{prefix}_command",
                         interactive=False, lines=2, buttons=["copy"])
    return gallery, status, command


def drawn_mask(editor):
    """The mask painted on the init image in the ImageEditor (its layers): 255 where a layer
    has an opaque light (white brush) pixel, else 0; None when nothing is painted."""
    import numpy as np

    layers = [np.asarray(x) for x in ((editor or {}).get("layers") or []) if x is not None]
    if not layers:
        return None
    painted = np.zeros(layers[0].shape[:2], bool)
    for x in layers:
        if x.shape[:2] != painted.shape:
            continue
        rgb = x[..., :3].astype(np.float32).mean(-1) if x.ndim == 3 else x.astype(np.float32)
        opaque = x[..., 3] > 127 if x.ndim == 3 and x.shape[-1] == 4 else True
        painted |= opaque & (rgb > 127.5)
    return np.where(painted, 255, 0).astype(np.uint8)


def build_app(engine: Engine) -> gr.Blocks:
    ldm = engine.labels("ldm")
    # the official model first, else the built-in one (what infer.sh runs), else the first found
    first = next((m.label for m in engine.models["ldm"] if m.ckpt.name == "wukong-huahua-ms.ckpt"), None) \
        or next((m.label for m in engine.models["ldm"] if m.ckpt.parent.name == "shapes_zh"), None) \
        or (ldm[0] if ldm else None)
    d = _defaults(engine, first) if first else None
    d = d or ("dpm_solver", 15, 7.5, 512, 512, 42)

    with gr.Blocks(title="Mind-Diffusion", analytics_enabled=False) as demo:
        gr.Markdown("## Mind-Diffusion\nText to image and image editing with the models under `models/`; images and "
                    "their settings go to `output/` as with `infer.sh` and the scripts.")
        with gr.Tabs(selected="txt2img") as tabs:
            # ------------------------------------------------------------ txt2img
            with gr.Tab("Text to image", id="txt2img"):
                with gr.Row():
                    model = gr.Dropdown(ldm, value=first, label="Model", elem_id="t2i_model", scale=4)
                    refresh = gr.Button("Refresh models", scale=1)
                if not ldm:
                    gr.Markdown(f"No text-to-image model under `{engine.models_dir}`: put "
                                "`wukong-huahua-ms.ckpt` there, or restore the built-in model with "
                                "`git checkout -- models/shapes_zh`.")
                with gr.Row():
                    with gr.Column(scale=3):
                        prompt = gr.Textbox(label="Prompt", lines=2, elem_id="t2i_prompt",
                                            placeholder="一个红色的圆形在左边")
                        negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="t2i_negative")
                        with gr.Row():
                            lora = gr.Dropdown([p.name for p in engine.loras], value=[], multiselect=True,
                                               label=f"LoRA ({engine.models_dir / 'lora'}/)", elem_id="t2i_lora",
                                               scale=3)
                            lora_w = gr.Number(1.0, label="LoRA weight", elem_id="t2i_lora_weight", scale=1)
                        sampler, steps, scale, width, height, seed, count, size, dice, go, stop = \
                            sampling_fields("t2i", d)
                    with gr.Column(scale=3):
                        gallery, status, command = result_fields("t2i")

                def run_txt2img(label, p, n, smp, st, sc, sd, w, h, bc, bs, lo, lw, progress=gr.Progress()):
                    try:
                        for u in engine.txt2img(label, p, n, smp, st, sc, sd, w, h, bc, bs, progress=progress,
                                                loras=lo, lora_weight=lw):
                            for note in u.warnings:
                                gr.Warning(note)
                            yield [str(x) for x in u.paths], u.status, u.command
                    except user_error_types() as exc:
                        raise page_error(exc) from None

                inputs = [model, prompt, negative, sampler, steps, scale, seed, width, height, count, size, lora,
                          lora_w]
                go.click(run_txt2img, inputs, [gallery, status, command], concurrency_id="generate",
                         concurrency_limit=1, api_name="txt2img")
                prompt.submit(run_txt2img, inputs, [gallery, status, command], concurrency_id="generate",
                              concurrency_limit=1, api_visibility="private")
                stop.click(engine.cancel, None, None, queue=False, api_visibility="private")
                dice.click(lambda: -1, None, seed, queue=False, api_visibility="private")

                def pick_model(label):
                    v = _defaults(engine, label)
                    if v is None:
                        return [gr.update()] * 6
                    return list(v)

                model.input(pick_model, model, [sampler, steps, scale, width, height, seed],
                             queue=False, api_visibility="private")

            # ------------------------------------------------------------ image editing
            with gr.Tab("Image editing", id="edit"):
                gr.Markdown("**img2img** redoes the last *strength* of the schedule from the init image under "
                            "the prompt; **inpaint** repaints the white part of the mask: paint it with the "
                            "white brush on the init image, or upload a mask file (white = repaint, the init "
                            "image's size). Both are fitted to Width x Height by *Fit* (as `--aug`).")
                with gr.Row():
                    e_model = gr.Dropdown(ldm, value=first, label="Model", elem_id="edit_model", scale=4)
                    e_task = gr.Radio(["inpaint", "img2img"], value="inpaint", label="Task", elem_id="edit_task",
                                      scale=2)
                with gr.Row():
                    with gr.Column(scale=3):
                        with gr.Row():
                            e_init = gr.File(label="Init image (PNG or JPG)", file_types=["image"],
                                             type="filepath", elem_id="edit_init")
                            e_mask = gr.File(label="Mask file (instead of drawing; white = repaint)",
                                             file_types=["image"], type="filepath", elem_id="edit_mask")
                        e_draw = gr.ImageEditor(
                            label="Mask: paint the part to repaint (white brush)", type="numpy", format="png",
                            image_mode="RGBA", sources=(), transforms=(), layers=False, elem_id="edit_draw",
                            brush=gr.Brush(colors=["#ffffff"], default_color="#ffffff", color_mode="fixed"),
                            height=360)
                        e_prompt = gr.Textbox(label="Prompt", lines=2, elem_id="edit_prompt",
                                              placeholder="一个蓝色的正方形在右边")
                        e_negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="edit_negative")
                        with gr.Row():
                            e_strength = gr.Number(1.0, label="Strength (0, 1]", step=0.05, elem_id="edit_strength")
                            e_mode = gr.Radio(["auto", "model", "blend"], value="auto", label="Inpaint mode",
                                              elem_id="edit_mode")
                            e_blur = gr.Number(0, precision=0, label="Mask blur (px, blend)", elem_id="edit_blur")
                            e_aug = gr.Dropdown(list(AUGS), value="resize", label="Fit (--aug)", elem_id="edit_aug")
                        e_note = gr.Markdown(blend_line(engine, first, "auto"), elem_id="edit_note")
                        (e_sampler, e_steps, e_scale, e_width, e_height, e_seed, e_count, e_size, e_dice, e_go,
                         e_stop) = sampling_fields("edit", d)
                    with gr.Column(scale=3):
                        e_gallery, e_status, e_command = result_fields("edit")

                def run_edit(label, task, init, mask_file, editor, p, n, smp, st, sc, sd, w, h, bc, bs, strength,
                             mode, blur, aug, progress=gr.Progress()):
                    try:
                        for u in engine.edit(label, task, init, mask_file, drawn_mask(editor), p, n, smp, st, sc, sd,
                                             w, h, bc, bs, strength, mode, blur, aug, progress=progress):
                            for note in u.warnings:
                                gr.Warning(note)
                            yield [str(x) for x in u.paths], u.status, u.command
                    except user_error_types() as exc:
                        raise page_error(exc) from None

                e_inputs = [e_model, e_task, e_init, e_mask, e_draw, e_prompt, e_negative, e_sampler, e_steps,
                            e_scale, e_seed, e_width, e_height, e_count, e_size, e_strength, e_mode, e_blur, e_aug]
                e_go.click(run_edit, e_inputs, [e_gallery, e_status, e_command], concurrency_id="generate",
                           concurrency_limit=1, api_name="edit")
                e_stop.click(engine.cancel, None, None, queue=False, api_visibility="private")
                e_dice.click(lambda: -1, None, e_seed, queue=False, api_visibility="private")
                e_init.change(lambda path: {"background": path, "layers": [], "composite": path} if path else None,
                              e_init, e_draw, queue=False, api_visibility="private")
                # the scripts' defaults: img2img 0.8 (diffusers'), inpaint 1 (from noise)
                e_task.input(lambda t: 0.8 if t == "img2img" else 1.0, e_task, e_strength, queue=False,
                             api_visibility="private")
                for trigger in (e_model.input, e_mode.input, e_task.input):
                    trigger(lambda label, mode, task: blend_line(engine, label, mode) if task == "inpaint" else "",
                            [e_model, e_mode, e_task], e_note, queue=False, api_visibility="private")
                e_model.input(pick_model, e_model, [e_sampler, e_steps, e_scale, e_width, e_height, e_seed],
                              queue=False, api_visibility="private")

            # ------------------------------------------------------------ GLIDE
            with gr.Tab("GLIDE", id="glide"):
                gl = engine.labels("glide")
                have = bool(gl)
                if not have:
                    gr.Markdown(
                        f"**GLIDE is off: no checkpoints.** Put `{GLIDE_FILES[64]}` and "
                        f"`{GLIDE_TOKENIZER}` into `{engine.models_dir / 'glide'}/` (and "
                        f"`{GLIDE_FILES[256]}` for 256 px, `{GLIDE_FILES[1024]}` for 1024 px; download: "
                        f"{GLIDE_URL}), or the built-in shapes-world GLIDE's files into "
                        f"`{engine.models_dir / 'glide_shapes'}/`, then restart the page.", elem_id="glide_missing")
                stages_have, g_steps0, g_scale0 = (_glide_defaults(engine, gl[0]) if have else None) \
                    or (["64"], 60, 5.0)
                with gr.Row():
                    g_model = gr.Dropdown(gl, value=gl[0] if have else None, label="Model", interactive=have)
                    g_stages = gr.Radio(stages_have, value=stages_have[-1], label="Last stage (px)",
                                        interactive=have)
                g_prompt = gr.Textbox(label="Prompt", lines=2, interactive=have, elem_id="glide_prompt")
                g_negative = gr.Textbox(label="Negative prompt", interactive=have)
                with gr.Row():
                    g_steps = gr.Number(g_steps0, precision=0, label="Base steps", interactive=have)
                    g_scale = gr.Number(g_scale0, label="CFG scale", interactive=have)
                    g_seed = gr.Number(0, precision=0, label="Seed (-1: random)", interactive=have)
                    g_n = gr.Number(1, precision=0, label="Images", interactive=have)
                with gr.Row():
                    g_go = gr.Button("Generate", variant="primary", interactive=have)
                    g_stop = gr.Button("Cancel", variant="stop", interactive=have)
                with gr.Row():
                    g64 = gr.Gallery(label="64 px", format="png", columns=2)
                    g256 = gr.Gallery(label="256 px", format="png", columns=2)
                    g1024 = gr.Gallery(label="1024 px", format="png", columns=2)
                g_status = gr.Markdown()
                g_command = gr.Textbox(label="Command line", elem_id="glide_command", interactive=False)

                def run_glide(label, p, n, st, sc, sd, k, stg, progress=gr.Progress()):
                    shown = {64: [], 256: [], 1024: []}
                    try:
                        for u in engine.glide(label, p, n, st, sc, sd, k, stg, progress=progress):
                            if u.stage is not None:
                                shown[u.stage] = [str(x) for x in u.paths if x.stem.endswith(f"-{u.stage}")]
                            yield shown[64], shown[256], shown[1024], u.status, u.command
                    except user_error_types() as exc:
                        raise page_error(exc) from None

                g_go.click(run_glide, [g_model, g_prompt, g_negative, g_steps, g_scale, g_seed, g_n, g_stages],
                           [g64, g256, g1024, g_status, g_command], concurrency_id="generate",
                           concurrency_limit=1, api_name="glide")
                g_stop.click(engine.cancel, None, None, queue=False, api_visibility="private")

                def pick_glide(label):  # the model's own stages and sampling defaults
                    v = _glide_defaults(engine, label)
                    if v is None:
                        return [gr.update()] * 3
                    return gr.update(choices=v[0], value=v[0][-1]), v[1], v[2]

                g_model.input(pick_glide, g_model, [g_stages, g_steps, g_scale], queue=False,
                              api_visibility="private")

            # ------------------------------------------------------------ DDPM
            with gr.Tab("DDPM", id="ddpm"):
                dd = engine.models["ddpm"]
                d0 = dd[0] if dd else None
                if not dd:
                    gr.Markdown(f"No DDPM model folder under `{engine.models_dir}` (e.g. "
                                "`models/ddpm_digits16`: `git checkout -- models/ddpm_digits16`).")
                with gr.Row():
                    d_model = gr.Dropdown([m.label for m in dd], value=d0.label if d0 else None, label="Model")
                    d_classes = gr.CheckboxGroup(list(d0.classes) if d0 else [],
                                                 value=list(d0.classes[:1]) if d0 else [], label="Classes",
                                                 elem_id="ddpm_classes")
                with gr.Row():
                    d_n = gr.Number(4, precision=0, label="Images per class")
                    # DDIM 50 as the README's example (the digits model's own default is 1000 DDPM steps)
                    d_sampler = gr.Dropdown([""] + SAMPLERS, value="ddim", label="Sampler (empty: the model's)")
                    d_steps = gr.Number(50, precision=0, label="Steps (empty: the model's)", elem_id="ddpm_steps")
                    d_seed = gr.Number(0, precision=0, label="Seed (-1: random)")
                with gr.Row():
                    d_go = gr.Button("Generate", variant="primary", interactive=bool(dd), elem_id="ddpm_generate")
                    d_stop = gr.Button("Cancel", variant="stop")
                d_gallery = gr.Gallery(label="Images", format="png", columns=8)
                d_status = gr.Markdown()
                d_command = gr.Textbox(label="Command line", elem_id="ddpm_command", interactive=False)

                def run_ddpm(label, classes, n, smp, st, sd, progress=gr.Progress()):
                    try:
                        for u in engine.ddpm(label, classes, n, smp, st, sd, progress=progress):
                            yield [str(x) for x in u.paths], u.status, u.command
                    except user_error_types() as exc:
                        raise page_error(exc) from None

                def pick_ddpm(label):
                    m = next((m for m in engine.models["ddpm"] if m.label == label), None)
                    names = list(m.classes) if m else []
                    return gr.update(choices=names, value=names[:1])

                d_model.change(pick_ddpm, d_model, d_classes, queue=False, api_visibility="private")
                d_go.click(run_ddpm, [d_model, d_classes, d_n, d_sampler, d_steps, d_seed],
                           [d_gallery, d_status, d_command], concurrency_id="generate",
                           concurrency_limit=1, api_name="ddpm")
                d_stop.click(engine.cancel, None, None, queue=False, api_visibility="private")

            # ------------------------------------------------------------ PNG info
            with gr.Tab("PNG info", id="pnginfo"):
                gr.Markdown("Drop a PNG written by this suite or by AUTOMATIC1111; **Send to text to "
                            "image** puts its settings into the form.")
                with gr.Row():
                    png = gr.File(label="PNG", file_types=[".png"], type="filepath", elem_id="png_file")
                    with gr.Column():
                        info = gr.JSON(label="Settings found", elem_id="png_settings")
                        info_text = gr.Markdown(elem_id="png_status")
                        send = gr.Button("Send to text to image", variant="primary", elem_id="png_send")
                found = gr.State(None)

                def read_png(path):
                    if not path:
                        return None, None, ""
                    try:
                        v = form_values(path)
                    except (ValueError, OSError) as exc:
                        raise page_error(exc) from None
                    shown = {k: x for k, x in v.items() if x not in (None, []) and k != "notes"}
                    note = "; ".join(v["notes"])
                    return v, shown, f"from {v['source']} metadata" + (f". {note}" if note else "")

                png.change(read_png, png, [found, info, info_text], api_visibility="private")

                def send_settings(v, cur_model):
                    if not v:
                        raise gr.Error("drop a PNG first", duration=None, print_exception=False)
                    keep = gr.update()
                    target = cur_model
                    name = v.get("checkpoint")
                    if name:
                        for m in engine.models["ldm"]:
                            if m.ckpt.name == name or m.ckpt.stem == name:
                                target = m.label
                                break
                        else:
                            gr.Warning(f"the PNG was made with {name}, which is not under "
                                       f"{engine.models_dir}; the form keeps {cur_model}")

                    def val(k):
                        return keep if v.get(k) is None else v[k]
                    return (gr.Tabs(selected="txt2img"), target, val("prompt"), val("negative_prompt"),
                            val("sampler"), val("steps"), val("scale"), val("seed"), val("width"),
                            val("height"))

                # the model picker's defaults follow user input only (model.input), so they do
                # not overwrite the PNG's values
                send.click(send_settings, [found, model],
                           [tabs, model, prompt, negative, sampler, steps, scale, seed, width, height],
                           api_visibility="private")  # queued: its warning reaches the page

        def refresh_models():
            engine.refresh()
            labels = engine.labels("ldm")
            up = gr.update(choices=labels, value=labels[0] if labels else None)
            return up, up

        refresh.click(refresh_models, None, [model, e_model], queue=False, api_visibility="private").then(
            lambda: gr.update(choices=[p.name for p in engine.loras]), None, lora, queue=False,
            api_visibility="private")
    demo.queue(default_concurrency_limit=1)
    return demo


def theme():
    """System fonts only: the page loads nothing from the internet."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])
