"""Worker for tests/test_data_parallel.py: trains the tiny DDPM for a few steps and dumps this
rank's parameters. Launched either by msrun (N ranks) or as one plain process."""
import sys
from pathlib import Path

import numpy as np

import mind_diffusion  # noqa: F401
from mind_diffusion.config import load_config
from mind_diffusion.ddpm.config import ddpm_config_defaults
from mind_diffusion.ddpm.training import build_ddpm_trainer
from mind_diffusion.runtime import init_runtime


def main(out_dir, steps, tag):
    tiny = [
        "model.img_channels=1", "model.image_size=8", "model.base_channels=16", "model.channel_mults=[1,2]",
        "model.num_res_blocks=1", "model.time_emb_dim=32", "model.num_groups=4", "model.dropout=0.0",
        "model.attention_resolutions=[1]", "model.num_classes=10", "data.kind=digits", "train.batch_size=8",
        "train.lr=1e-3", "train.ema_start=1", "train.ema_decay=0.9", "train.log_every=1",
        f"train.steps={steps}", f"train.output_dir={out_dir}/{tag}_run", "train.ckpt_every=100",
    ]
    cfg = load_config(None, tiny, ddpm_config_defaults())
    rt = init_runtime("CPU", "graph", seed=0)
    trainer, make = build_ddpm_trainer(cfg, rt, progress=False)
    trainer.fit(make)
    name = f"{tag}{rt.rank}" if rt.distributed else tag
    params = {p.name: p.asnumpy() for p in trainer.model.get_parameters()}
    params.update(trainer.ema.state())
    np.savez(Path(out_dir) / f"{name}.npz", group_size=rt.group_size, **params)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
