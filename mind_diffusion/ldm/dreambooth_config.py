"""The DreamBooth config (MindSpore-free, so the cluster launcher can check a run before starting it):
the schema, the original's ``train_db_config.json`` keys and ``run_db_train.py`` flags, and
:func:`load_dreambooth_config`, which merges them (see ``dreambooth_training.py`` for the method)."""
from __future__ import annotations

from pathlib import Path

from ..train.data import DataError
from .config import ldm_train_config_defaults

__all__ = ["FLAG_KEYS", "LORA_KEYS", "ORIGINAL_JSON_KEYS", "dreambooth_config_defaults", "load_dreambooth_config",
           "read_original_json"]


def dreambooth_config_defaults() -> dict:
    """The LDM training schema plus the ``dreambooth:`` section (the original's
    ``train_db_config.json`` + ``v1-train-db-chinese.yaml`` values where they exist)."""
    cfg = ldm_train_config_defaults()
    cfg["train"].update({"batch_size": 1, "epochs": 5, "warmup_steps": 100, "start_learning_rate": 1.0e-6,
                         "end_learning_rate": 1.0e-7, "ckpt_every": 1000, "output_dir": "output/dreambooth"})
    cfg["dreambooth"] = {
        "instance_data": "",             # --train_data_path: folder of 3-5 images of the subject
        "class_data": None,              # --reg_data_path: class images (cache); null = no prior preservation
        "token": "α",                    # --token: the rare identifier
        "class_word": "",                # --class_word
        "instance_prompt": "{token}{class_word}",   # caption of instance images without a .txt
        "class_prompt": "{class_word}",             # caption / generation prompt of class images
        "class_prompts_file": None,      # one class prompt per line (cycled) for generated class images
        "num_class_images": 200,
        "prior_loss_weight": 0.5,        # reg_weight
        "train_data_repeats": 100,       # steps per epoch = instances x (repeats + 1) / global batch
        "max_token_rate": 0.01,          # the token may occur in at most this share of training captions
        "generation_batch": 16,
        # F (0: the original's plain mean): each instance image's latent cells weigh 1 + F * m in its loss,
        # m the share of the cell inside the subject's mask (<stem>.mask.png beside the image, white =
        # subject, else its alpha channel); as diffusion.foreground_weight in GLIDE training
        "subject_weight": 0.0,
        # with LoRA: also train the identifier's own embedding rows (textual inversion; they are new to
        # the model, so a frozen text encoder only passes their untrained values on); saved in lora.ckpt
        "train_token_rows": False,
        # with train_token_rows: words whose embedding rows the identifier's rows start from (textual
        # inversion's initializer, e.g. the class's nearest shape word), so training starts from a prompt
        # the model already draws; it must tokenize to as many ids as the token. "" = the token's own rows
        "token_init": "",
        # pivotal tuning (with train_token_rows): for the first pivot_steps updates only the identifier's
        # rows train, at pivot_learning_rate (textual inversion finds the token a place in the frozen
        # model's text space), then the LoRA joins on the common schedule and the rows follow it; 0 = off
        "pivot_steps": 0,
        "pivot_learning_rate": 5.0e-3,
        # instance rows draw t in [instance_t_min, T) (class rows: [0, T)): the noisy steps, where the
        # layout and the outline are decided, get the instance images' whole gradient; 0 = the original
        "instance_t_min": 0,
        # and below instance_t_max (0 = T, the chain's end): the noisiest steps, where only the layout
        # (the instances' own colours and places) is decided, left to the class rows
        "instance_t_max": 0,
    }
    return cfg


# ------------------------------------------------------------------------------ the original's CLI
#: keys of the original's train_db_config.json -> config keys (model_config, data_path, patch_size,
#: gradient_accumulation_steps and weight_decay are not read: the model comes from the pretrained
#: folder, and the original hard-codes weight decay 1e-6)
ORIGINAL_JSON_KEYS = {
    "train_batch_size": "train.batch_size", "epochs": "train.epochs", "optim": "train.optim",
    "betas": "train.betas", "dropout": "train.unet_dropout", "warmup_steps": "train.warmup_steps",
    "seed": "train.seed", "start_learning_rate": "train.start_learning_rate",
    "end_learning_rate": "train.end_learning_rate", "decay_steps": "train.decay_steps",
    "save_checkpoint_steps": "train.ckpt_every", "image_size": "data.image_size",
    "image_filter_size": "data.image_filter_size", "random_crop": "data.random_crop",
    "filter_small_size": "data.filter_small_size", "train_data_path": "dreambooth.instance_data",
    "reg_data_path": "dreambooth.class_data", "train_data_repeats": "dreambooth.train_data_repeats",
    "class_word": "dreambooth.class_word", "token": "dreambooth.token",
}
#: the flags of run_db_train.py -> config keys
FLAG_KEYS = {
    "train_data_path": "dreambooth.instance_data", "reg_data_path": "dreambooth.class_data",
    "class_word": "dreambooth.class_word", "token": "dreambooth.token", "output_path": "train.output_dir",
    "prior_loss_weight": "dreambooth.prior_loss_weight", "num_class_images": "dreambooth.num_class_images",
    "class_prompts_file": "dreambooth.class_prompts_file", "instance_prompt": "dreambooth.instance_prompt",
    "train_batch_size": "train.batch_size", "epochs": "train.epochs", "seed": "train.seed",
    "enable_lora": "model.unet.enable_lora", "lora_rank": "model.unet.lora_rank", "lora_alpha": "model.unet.lora_alpha",
}
LORA_KEYS = ("enable_lora", "lora_rank", "lora_alpha", "lora_targets")


def _set(tree: dict, dotted: str, value):
    node = tree
    *parents, leaf = dotted.split(".")
    for k in parents:
        node = node.setdefault(k, {})
    node[leaf] = value


def read_original_json(path) -> tuple[dict, dict]:
    """(config tree, pretrained {path, file}) from the original's ``train_db_config.json``."""
    import json

    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"--train_config {path} is not a readable JSON file ({exc})") from None
    if not isinstance(raw, dict):
        raise DataError(f"--train_config {path} must hold a JSON object (the original's train_db_config.json)")
    tree = {}
    for key, dotted in ORIGINAL_JSON_KEYS.items():
        if key in raw:
            _set(tree, dotted, raw[key])
    return tree, {"path": raw.get("pretrained_model_path"), "file": raw.get("pretrained_model_file")}


def load_dreambooth_config(train_config, flags: dict, overrides=(), pretrained_path=None, pretrained_file=None):
    """The DreamBooth config: schema <- ``train_config`` (this repo's YAML, or the original's
    ``train_db_config.json``) <- the base model's own model / tokenizer / sampling sections when
    ``pretrained_path`` is a model folder with ``config.yaml`` / ``model.yaml`` (else the checkpoint
    ``pretrained_path/pretrained_file``, default wukong-huahua-ms.ckpt, for the config's model)
    <- ``flags`` (run_db_train.py's, None = not given) <- ``overrides`` (key=value)."""
    from ..config import load_config, merge_overrides, to_plain
    from .config import ldm_config_defaults

    schema = dreambooth_config_defaults()
    path = Path(str(train_config)).expanduser()
    if not path.is_file():
        raise DataError(f"--train_config not found: {path} (a YAML such as configs/shapes/dreambooth.yaml, or "
                        f"the original's train_db_config.json)")
    if path.suffix.lower() == ".json":
        tree, pre = read_original_json(path)
        cfg = merge_overrides(schema, tree, f"--train_config {path}")
        pretrained_path = pretrained_path or pre["path"]
        pretrained_file = pretrained_file or pre["file"]
    else:
        cfg = to_plain(load_config(path, [], schema))
    if pretrained_path:
        folder = Path(str(pretrained_path)).expanduser()
        model_cfg = next((folder / n for n in ("config.yaml", "model.yaml") if (folder / n).is_file()), None)
        if model_cfg is not None:
            base = load_config(model_cfg, [], ldm_config_defaults())
            # the training config's LoRA choice, for the UNet and the text encoder
            lora = {part: {k: cfg["model"][part][k] for k in LORA_KEYS} for part in ("unet", "text_encoder")}
            for sec in ("model", "tokenizer"):
                cfg[sec] = to_plain(base[sec])
            for part, keys in lora.items():
                cfg["model"][part].update(keys)
            cfg["sampling"] = {k: v for k, v in to_plain(base.sampling).items() if k in cfg["sampling"]}
            name = pretrained_file or str(base.checkpoint.name)
            cfg["init"]["vocab"] = str(folder / str(base.tokenizer.vocab_file))
        else:
            name = pretrained_file or "wukong-huahua-ms.ckpt"
            if (folder / str(cfg["tokenizer"]["vocab_file"])).is_file():
                cfg["init"]["vocab"] = str(folder / str(cfg["tokenizer"]["vocab_file"]))
        cfg["init"]["checkpoint"] = str(folder / name)
    tree = {}
    for k, v in flags.items():
        if v is not None and k in FLAG_KEYS:
            _set(tree, FLAG_KEYS[k], v)
    cfg = merge_overrides(cfg, tree, "command line")
    return load_config(None, list(overrides), cfg)
