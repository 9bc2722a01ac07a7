"""Multi-node launches rehearsed on this machine through scripts/launch_train.py (slow: each launch
compiles the train step in every process, minutes on 2 busy cores).

- two nodes x one worker (two msrun invocations, node ranks 0 and 1, one master) give the same
  training checkpoint as one process on the combined batch, for the DDPM and the LDM trainers;
- a rank-table launch (--device_target CPU rehearsal) gives the same checkpoint too;
- DreamBooth through scripts/run_train_db_msrun.sh (2 workers, the original's flags) ends where one
  process on the combined batch ends;
- a node that never joins: one line naming the missing rank, nothing written;
- a worker killed mid-run: the other node stops by itself, the checkpoints left all read, and
  --resume auto on both nodes ends where an uninterrupted run ends.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from mind_diffusion.checkpoint.io import read_checkpoint
from mind_diffusion.train.launch import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MIND_DIFFUSION_SHARED", ROOT.parent / "shared"))
LAUNCH = ROOT / "scripts" / "launch_train.py"
TINY_DDPM = ["--config", str(ROOT / "configs/ddpm/digits16.yaml"), "--device_target", "CPU", "--no_progress",
             "model.img_channels=1", "model.image_size=8", "model.base_channels=16", "model.channel_mults=[1,2]",
             "model.num_res_blocks=1", "model.time_emb_dim=32", "model.num_groups=4", "model.dropout=0.0",
             "model.attention_resolutions=[1]", "train.batch_size=8", "train.lr=1e-3", "train.ema_start=1",
             "train.ema_decay=0.9", "train.log_every=1", "train.ckpt_every=2", "train.keep_checkpoints=0"]
LONG = 40  # steps of the interrupted run


def env():
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT),
            "PYTHON": sys.executable}


def single(script, args, timeout=900):
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], cwd=ROOT, env=env(),
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]


def node(trainer, rank, port, logs, args, nodes=2, time_out=240):
    """One node's launcher; its stdout and stderr go to <logs>/node<rank>.out / .err (read with ``said``)."""
    Path(logs).mkdir(parents=True, exist_ok=True)
    with open(Path(logs) / f"node{rank}.out", "w") as out, open(Path(logs) / f"node{rank}.err", "w") as err:
        p = subprocess.Popen([sys.executable, str(LAUNCH), "msrun", trainer, "--worker_num", str(nodes),
                              "--local_worker_num", "1", "--node_rank", str(rank), "--master_port", str(port),
                              "--log_dir", str(logs), "--cluster_time_out", str(time_out), "--", *args],
                             cwd=ROOT, env=env(), stdout=out, stderr=err)
    p.logs, p.rank = Path(logs), rank
    return p


def said(p, stream="err") -> str:
    return (p.logs / f"node{p.rank}.{stream}").read_text(errors="replace")


def two_nodes(trainer, logs, args0, args1=None, timeout=900):
    port = free_port()
    n0 = node(trainer, 0, port, logs, args0)
    n1 = node(trainer, 1, port, logs, args1 or args0)
    for p in (n0, n1):
        p.wait(timeout=timeout)
    for p in (n0, n1):
        assert p.returncode == 0, f"{said(p)[-2000:]}\n" + "".join(
            f.read_text()[-1500:] for f in sorted(Path(logs).glob("*.log")))


def max_diff(a: Path, b: Path) -> float:
    x, y = read_checkpoint(a), read_checkpoint(b)
    assert sorted(x) == sorted(y)
    d = max(float(np.abs(np.asarray(x[k], np.float64) - np.asarray(y[k], np.float64)).max()) for k in x)
    print(f"{a.parent.parent.name}/{a.parent.name}/{a.name}: {len(x)} tensors, max |difference| {d:.1e}")
    return d


def assert_moved(run: Path, step: int):
    """The comparison is between trained states: the live weights left the EMA's early copy."""
    state = read_checkpoint(run / "checkpoints" / f"step_{step:07d}.ckpt")
    moved = max(float(np.abs(state[k] - state["ema." + k]).max()) for k in state if "ema." + k in state)
    assert moved > 1e-5


@pytest.fixture(scope="module")
def ddpm_single(tmp_path_factory):
    """One process, the combined batch, LONG steps, every 2nd step checkpointed."""
    out = tmp_path_factory.mktemp("ddpm_single") / "run"
    single("train_ddpm.py", [*TINY_DDPM, f"train.steps={LONG}", f"train.output_dir={out}"])
    return out


def test_two_nodes_ddpm_match_one_process(ddpm_single, tmp_path):
    run = tmp_path / "run"
    two_nodes("ddpm", tmp_path / "logs", [*TINY_DDPM, "train.steps=4", f"train.output_dir={run}"])
    assert max_diff(run / "checkpoints/step_0000004.ckpt", ddpm_single / "checkpoints/step_0000004.ckpt") <= 2e-5
    assert_moved(ddpm_single, 4)
    assert sorted(p.name for p in (tmp_path / "logs").glob("*.log")) == ["scheduler.log", "worker_0.log",
                                                                         "worker_1.log"]
    assert "joins the scheduler of node 0 through 0.0.0.0" in (tmp_path / "logs" / "node1.out").read_text()


def test_rank_table_rehearsal_matches_one_process(ddpm_single, tmp_path):
    table = tmp_path / "hccl_2p.json"
    table.write_text(json.dumps({"version": "1.0", "server_count": "1", "status": "completed", "server_list": [
        {"server_id": "127.0.0.1", "host_nic_ip": "reserve", "device": [
            {"device_id": "0", "device_ip": "192.168.100.101", "rank_id": "0"},
            {"device_id": "1", "device_ip": "192.168.101.101", "rank_id": "1"}]}]}))
    run, logs = tmp_path / "run", tmp_path / "logs"
    p = subprocess.run(["bash", str(ROOT / "scripts/run_train_ddpm_ranktable.sh"), str(table), TINY_DDPM[1],
                        *TINY_DDPM[2:], "train.steps=4", f"train.output_dir={run}"],
                       cwd=ROOT, env={**env(), "LOG_DIR": str(logs)}, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "all 2 rank(s) finished" in p.stdout
    assert max_diff(run / "checkpoints/step_0000004.ckpt", ddpm_single / "checkpoints/step_0000004.ckpt") <= 2e-5
    for r in (0, 1):  # one folder per rank; each process was given its rank (checked after init)
        assert (logs / f"rank_{r}" / "log_train").is_file()
    assert "done: {'step': 4" in (logs / "rank_0" / "log_train").read_text()


def test_node_that_never_joins_is_named_and_nothing_is_written(tmp_path):
    run = tmp_path / "run"
    start = time.time()
    n0 = node("ddpm", 0, free_port(), tmp_path / "logs", [*TINY_DDPM, "train.steps=4", f"train.output_dir={run}"],
              time_out=60)
    n0.wait(timeout=600)
    assert n0.returncode != 0
    last = said(n0).strip().splitlines()[-1]
    assert last.startswith("error: rank(s) 1 never joined the cluster within --cluster_time_out=60 s: start node_rank 1 "
                           "with the same --master_addr 127.0.0.1")
    assert not list(run.rglob("*.ckpt")) and not (run / "checkpoints").exists()
    print(f"node 0 alone gave up after {time.time() - start:.0f} s")


def _worker_of(launcher: subprocess.Popen):
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if any("train_ddpm.py" in a for a in child.cmdline()) and child.environ().get("MS_ROLE") == "MS_WORKER":
                return child
        except psutil.Error:
            continue
    return None


def test_worker_killed_mid_run_others_stop_and_resume_matches(ddpm_single, tmp_path):
    run, args = tmp_path / "run", [*TINY_DDPM, f"train.steps={LONG}", f"train.output_dir={tmp_path / 'run'}"]
    port = free_port()
    n0 = node("ddpm", 0, port, tmp_path / "logs", args, time_out=60)
    n1 = node("ddpm", 1, port, tmp_path / "logs", args, time_out=60)
    deadline = time.time() + 600
    while not (run / "checkpoints" / "step_0000002.ckpt").exists():
        assert time.time() < deadline and n0.poll() is None and n1.poll() is None, "the run did not start"
        time.sleep(0.2)
    victim = _worker_of(n1)
    assert victim is not None
    victim.send_signal(signal.SIGKILL)
    killed = time.time()
    n1.wait(timeout=300)
    n0.wait(timeout=600)
    stopped = time.time() - killed
    assert n1.returncode != 0 and n0.returncode != 0
    assert stopped < 180, f"node 0 ran on for {stopped:.0f} s after its peer died"
    ckpts = sorted((run / "checkpoints").glob("step_*.ckpt"))
    assert ckpts and not list(run.rglob("*.tmp"))
    done = max(int(p.stem.split("_")[1]) for p in ckpts)
    assert done < LONG  # it was interrupted, not finished
    for p in ckpts:
        read_checkpoint(p)  # every checkpoint left behind is whole
    two_nodes("ddpm", tmp_path / "logs2", [*args, "--resume", "auto"])
    assert max_diff(run / f"checkpoints/step_{LONG:07d}.ckpt", ddpm_single / f"checkpoints/step_{LONG:07d}.ckpt") <= 2e-5
    assert max_diff(run / "model.ckpt", ddpm_single / "model.ckpt") <= 2e-5
    print(f"peer killed after step >= 2; node 0 stopped {stopped:.0f} s later; resumed from step {done}")


def _images(folder: Path, n: int = 4):
    from PIL import Image

    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    rows = ["dir,text"]
    captions = ["红色 圆形 在 蓝色 背景", "绿色 方块 在 白色 背景", "黄色 三角形", "黑色 星星"]
    for i in range(n):
        img = np.zeros((40, 48, 3), np.uint8)
        img[...] = rng.integers(0, 256, 3)
        img[5:25, 8:30] = rng.integers(0, 256, 3)
        Image.fromarray(img).save(folder / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{captions[i]}")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def test_two_nodes_ldm_match_one_process(tmp_path):
    vocab = SHARED / "reference" / "vocab_zh.txt"
    if not vocab.is_file():
        pytest.skip(f"{vocab} not found (reference data lives beside the repo)")
    data = _images(tmp_path / "pairs")
    common = ["--config", str(ROOT / "configs/ldm/tiny-csv.yaml"), "--device_target", "CPU", "--no_progress",
              f"data.path={data}", f"init.vocab={vocab}", "train.steps=3", "train.ckpt_every=100",
              "train.log_every=1", "train.warmup_steps=1", "train.start_learning_rate=3e-3"]
    # train.batch_size is per worker in the LDM trainer: 2 workers x 1 = one process x 2
    single("train_ldm.py", [*common, "train.batch_size=2", f"train.output_dir={tmp_path / 'single'}"])
    two_nodes("ldm", tmp_path / "logs", [*common, "train.batch_size=1", f"train.output_dir={tmp_path / 'dp'}"])
    assert max_diff(tmp_path / "dp/checkpoints/step_0000003.ckpt",
                    tmp_path / "single/checkpoints/step_0000003.ckpt") <= 2e-5
    assert max_diff(tmp_path / "dp/model.ckpt", tmp_path / "single/model.ckpt") <= 2e-5


def test_two_nodes_glide_match_one_process(tmp_path):
    from glide_tiny import shapes_glide_data, tiny_glide_train_config, train_shapes_sp

    sp = train_shapes_sp(tmp_path)
    data = shapes_glide_data(tmp_path / "data", 8)
    cfg = tiny_glide_train_config(tmp_path, sp, data, steps=3, ckpt_every=100, decay_steps=3)
    common = ["--config", str(cfg), "--device_target", "CPU", "--no_progress", "train.start_learning_rate=3e-3"]
    # train.batch_size is per worker, as the original's --batch_size: 2 workers x 2 = one process x 4
    single("train_glide.py", [*common, "train.batch_size=4", f"train.output_dir={tmp_path / 'single'}"])
    two_nodes("glide", tmp_path / "logs", [*common, "train.batch_size=2", f"train.output_dir={tmp_path / 'dp'}"])
    assert max_diff(tmp_path / "dp/checkpoints/step_0000003.ckpt",
                    tmp_path / "single/checkpoints/step_0000003.ckpt") <= 2e-5
    assert max_diff(tmp_path / "dp/glide_gen.ckpt", tmp_path / "single/glide_gen.ckpt") <= 2e-5


def test_dreambooth_msrun_two_workers_match_one_process(tmp_path):
    """DreamBooth with prior preservation, 2 msrun workers x 1 instance row (+ 1 class row) through
    run_train_db_msrun.sh = one process x 2: the rows, t and noise are drawn for the global batch and
    each rank takes its shard."""
    vocab = SHARED / "reference" / "vocab_zh.txt"
    if not vocab.is_file():
        pytest.skip(f"{vocab} not found (reference data lives beside the repo)")
    from PIL import Image

    from ldm_tiny import make_tiny_model_dir
    from test_dreambooth import _instances

    make_tiny_model_dir(tmp_path / "base", SHARED)
    _instances(tmp_path / "inst", token="sks", n=3, captions=False)  # 3 instances captioned "sks猫"
    cls = tmp_path / "cls"  # a full class folder: nothing to generate
    cls.mkdir()
    for k in range(3):
        Image.new("RGB", (64, 64), (60 * k, 120, 200 - 50 * k)).save(cls / f"cat_{k}.png")
        (cls / f"cat_{k}.txt").write_text(["一只猫", "猫在左边", "白色的猫"][k], encoding="utf-8")
    config = str(ROOT / "configs/ldm/tiny-csv.yaml")
    flags = ["--pretrained_model_path", str(tmp_path / "base"), "--pretrained_model_file", "tiny.ckpt",
             "--train_data_path", str(tmp_path / "inst"), "--reg_data_path", str(cls), "--class_word", "猫",
             "--token", "sks", "--num_class_images", "3", "--device_target", "CPU"]
    over = ["train.steps=3", "train.ckpt_every=100", "train.log_every=1", "train.warmup_steps=1",
            "train.start_learning_rate=3e-3", "data.cache_latents=true"]
    single("run_db_train.py", ["--train_config", config, "--no_progress", *flags, "--train_batch_size", "2",
                               "--output_path", str(tmp_path / "single"), *over])
    p = subprocess.run(["bash", str(ROOT / "scripts/run_train_db_msrun.sh"), "2", config, *flags,
                        "--train_batch_size", "1", "--output_path", str(tmp_path / "dp"), *over], cwd=ROOT,
                       env={**env(), "LOG_DIR": str(tmp_path / "logs"), "MASTER_PORT": str(free_port())},
                       capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:] + "".join(
        f.read_text()[-1500:] for f in sorted((tmp_path / "logs").glob("*.log")))
    assert sorted(q.name for q in (tmp_path / "logs").glob("worker_*.log")) == ["worker_0.log", "worker_1.log"]
    assert "prior preservation on 3 class images" in (tmp_path / "logs" / "worker_0.log").read_text()
    assert max_diff(tmp_path / "dp/checkpoints/step_0000003.ckpt",
                    tmp_path / "single/checkpoints/step_0000003.ckpt") <= 2e-5
    assert max_diff(tmp_path / "dp/model.ckpt", tmp_path / "single/model.ckpt") <= 2e-5
    base, trained = read_checkpoint(tmp_path / "base/tiny.ckpt"), read_checkpoint(tmp_path / "dp/model.ckpt")
    moved = max(float(np.abs(trained[k] - base[k]).max()) for k in base if k.startswith("model.diffusion_model."))
    assert moved > 1e-3  # the UNet trained (3.1e-3 from the base after 3 steps), the runs agree to 2e-5
    assert sorted(q.name for q in cls.iterdir()) == sorted(f"cat_{k}.{e}" for k in range(3) for e in ("png", "txt"))
