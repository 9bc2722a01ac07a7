"""Start any trainer on several workers: msrun (several nodes) or an HCCL rank table.

    python scripts/launch_train.py msrun ddpm --worker_num 16 --local_worker_num 8 --master_addr 10.0.0.1 \
        --node_rank 0 -- --config configs/ddpm/cifar10.yaml data.path=/data/cifar-10-python.tar.gz
    python scripts/launch_train.py ranktable ldm --rank_table hccl_8p.json --devices 0,1,2,3,4,5,6,7 \
        -- --config configs/wukong/train-finetune.yaml data.path=dataset/
    python scripts/launch_train.py ranktable ddpm --rank_table hccl_2p.json --dry_run -- --config ...
    python scripts/launch_train.py msrun db --worker_num 8 -- --train_config configs/wukong/train-db.yaml \
        --train_data_path dataset/train_cat --reg_data_path dataset/reg_cat --class_word 猫 --token α \
        --output_path output/α猫 --pretrained_model_path models

Everything is checked before a process starts (one line, exit 2); the shell launchers
(scripts/run_train_*_msrun.sh, run_train_*_ranktable.sh, run_train_parallel.sh) call this.
A trainer joins with one line in TRAINERS (its script, its config schema, whether train.batch_size
is the global batch or each worker's) and two three-line wrappers, run_train_<name>_msrun.sh and
run_train_<name>_ranktable.sh (copies of the DDPM ones); an original script name such as Taichu-GLIDE's
run_gen_finetune_dist.sh [DEVICE_NUM] [DEVICES] [RANK_TABLE_FILE] maps onto `ranktable <name>
--device_num --devices --rank_table` as scripts/run_train_parallel.sh does for Wukong-Huahua. A script
whose command line is not `--config CONFIG.yaml key=value ...` gives its own reader (`load`, DreamBooth's
original flags: the launcher checks them as run_db_train.py will read them).
"""
import sys
from pathlib import Path

from mind_diffusion.cli.dreambooth import launch_config as dreambooth_launch_config
from mind_diffusion.ddpm.config import ddpm_config_defaults
from mind_diffusion.ldm.config import ldm_train_config_defaults, vae_train_config_defaults
from mind_diffusion.ldm.dreambooth_config import dreambooth_config_defaults
from mind_diffusion.train.launch import TrainerSpec, main

ROOT = Path(__file__).resolve().parents[1]


def glide_train_config_defaults() -> dict:
    """The GLIDE trainer's schema, imported only when that trainer is launched (its module loads MindSpore)."""
    from mind_diffusion.glide.training import glide_train_config_defaults as defaults

    return defaults()


TRAINERS = {
    "ddpm": TrainerSpec("scripts/train_ddpm.py", ddpm_config_defaults, batch="global"),
    "ldm": TrainerSpec("scripts/train_ldm.py", ldm_train_config_defaults, batch="per_worker"),
    "vae": TrainerSpec("scripts/train_vae.py", vae_train_config_defaults, batch="per_worker", config_required=False),
    "glide": TrainerSpec("scripts/train_glide.py", glide_train_config_defaults, batch="per_worker"),
    # DreamBooth (db, as the original's run_db_train): the original's flags (--train_config, --train_data_path
    # ...); train.batch_size is each worker's instance rows (as many class rows), global = batch x workers
    "db": TrainerSpec("scripts/run_db_train.py", dreambooth_config_defaults, batch="per_worker",
                      config_required=False, load=dreambooth_launch_config),
}

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], TRAINERS, ROOT))
