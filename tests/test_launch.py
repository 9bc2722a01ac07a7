"""The launcher core (mind_diffusion/train/launch.py): msrun command lines per node, the
environment of each rank from HCCL rank tables, the supervisor's log layout and failure
handling, and every refusal before a process starts. No MindSpore process is started here
(the multi-process runs are in test_launch_cluster.py, marked slow)."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mind_diffusion.runtime import RuntimeConfigError, check_rank_env
from mind_diffusion.train import launch as L
from scripts.launch_train import TRAINERS

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "ddpm" / "digits16.yaml")


def table(path: Path, servers: list[list[int]], first_rank: int = 0, **extra) -> Path:
    """A rank table like hccl_tools.py writes: server s holds devices servers[s], ranks in order."""
    rank, server_list = first_rank, []
    for s, devs in enumerate(servers):
        dev = []
        for d in devs:
            dev.append({"device_id": str(d), "device_ip": f"192.168.{100 + d}.{s + 1}", "rank_id": str(rank)})
            rank += 1
        server_list.append({"server_id": f"10.0.0.{s + 1}", "device": dev, "host_nic_ip": "reserve"})
    data = {"version": "1.0", "server_count": str(len(servers)), "server_list": server_list,
            "status": "completed", **extra}
    path.write_text(json.dumps(data))
    return path


def run_main(argv, capsys):
    code = L.main(argv, TRAINERS, ROOT)
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------------------ msrun
def test_msrun_two_nodes_command_lines():
    p0 = L.plan_msrun(16, 8, "127.0.0.1", 8118, 0, "logs", 120, check_port=False)
    p1 = L.plan_msrun(16, 8, "127.0.0.1", 8118, 1, "logs", 120, check_port=False)
    assert (p0.nodes, p0.local_ranks, p1.local_ranks) == (2, list(range(8)), list(range(8, 16)))
    c0 = L.msrun_command(p0, "msrun", "scripts/train_ddpm.py", ["--config", "x.yaml", "train.steps=5"])
    assert c0 == ["msrun", "--worker_num=16", "--local_worker_num=8", "--master_addr=127.0.0.1", "--master_port=8118",
                  "--node_rank=0", "--log_dir=logs", "--join=True", "--cluster_time_out=120",
                  "scripts/train_ddpm.py", "--config", "x.yaml", "train.steps=5"]
    # node 1 on the master's own machine joins node 0's scheduler instead of starting a second one
    c1 = L.msrun_command(p1, "msrun", "s.py", [])
    assert "--master_addr=0.0.0.0" in c1 and "--node_rank=1" in c1 and p0.is_master and not p1.is_master
    # a remote master: node 1 passes it unchanged
    remote = L.plan_msrun(4, 2, "192.0.2.254", 8118, 1, "logs", 60, check_port=False)
    assert remote.msrun_master_addr == "192.0.2.254" and not remote.is_master


@pytest.mark.parametrize("kw, needle", [
    (dict(worker_num=4, local_worker_num=3), "not a multiple of --local_worker_num=3"),
    (dict(worker_num=4, local_worker_num=2, node_rank=2), "--node_rank=2 is out of range: 4 workers at 2 per node make 2 node(s)"),
    (dict(worker_num=2, node_rank=1), "--node_rank=1 is out of range"),
    (dict(worker_num=0), "--worker_num (total workers) must be >= 1, got 0"),
    (dict(worker_num="two"), "must be an integer, got 'two'"),
    (dict(worker_num=2, local_worker_num=4), "--local_worker_num (workers on this node) must be in 1..2"),
    (dict(worker_num=2, master_port=80), "--master_port must be in 1024..65535, got 80"),
    (dict(worker_num=2, master_addr="no-such-host.invalid"), "does not resolve"),
])
def test_msrun_plan_errors(kw, needle):
    with pytest.raises(L.LaunchError, match=None) as exc:
        L.plan_msrun(**{"check_port": False, **kw})
    assert needle in str(exc.value)


def test_busy_master_port_is_refused_before_anything_starts(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, out, err = run_main(["msrun", "ddpm", "--worker_num", "2", "--master_port", str(port), "--log_dir",
                                   str(tmp_path / "logs"), "--", "--config", DIGITS], capsys)
    assert code == 2 and err.strip() == (f"error: --master_port {port} is already in use on 127.0.0.1: pick a free "
                                         f"port (MASTER_PORT=...) or stop the job holding it")
    assert not (tmp_path / "logs").exists() and "$ " not in out


@pytest.mark.parametrize("trainer_args, needle", [
    (["--config", DIGITS, "train.batch_size=10"],
     "train.batch_size=10 (the global batch) must be divisible by 4 worker(s) x train.grad_accum_steps=1 = 4: use "
     "train.batch_size=8 or 12, or change train.grad_accum_steps; or launch a worker count that divides it: "
     "[1, 2, 5, 10]"),
    (["--config", DIGITS, "train.btch_size=8"], "unknown config key 'train.btch_size'"),
    (["--config", DIGITS, "train.lr=-1"], "train.lr must be > 0, got -1"),
    (["--config", "nope.yaml"], "config file not found: nope.yaml"),
    ([], "scripts/train_ddpm.py needs --config CONFIG.yaml"),
])
def test_trainer_config_checked_before_launch(trainer_args, needle, capsys):
    code, out, err = run_main(["msrun", "ddpm", "--worker_num", "4", "--dry_run", "--", *trainer_args], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1 and "$ " not in out


def test_per_worker_batch_fits_any_count_and_accumulation_counts():
    cfg = L.preflight(TRAINERS["ldm"], ["--config", str(ROOT / "configs/ldm/tiny-csv.yaml"), "train.batch_size=3"],
                      5, ROOT)
    assert L.global_batch(TRAINERS["ldm"], cfg, 5) == 15
    cfg = L.preflight(TRAINERS["ddpm"], ["--config", DIGITS, "--resume", "auto", "train.batch_size=12"], 4, ROOT)
    assert L.global_batch(TRAINERS["ddpm"], cfg, 4) == 12
    cfg.train.grad_accum_steps = 2  # the batch splits over workers x micro-batches
    with pytest.raises(L.LaunchError, match=r"divisible by 4 worker\(s\) x train.grad_accum_steps=2 = 8"):
        L.global_batch(TRAINERS["ddpm"], cfg, 4)


def test_vae_config_is_optional_and_every_trainer_script_exists():
    cfg = L.preflight(TRAINERS["vae"], ["train.batch_size=2"], 3, ROOT)
    assert L.global_batch(TRAINERS["vae"], cfg, 3) == 6
    for name, spec in TRAINERS.items():
        assert (ROOT / spec.script).is_file(), name
        assert (ROOT / "scripts" / f"run_train_{name}_msrun.sh").is_file()
        assert (ROOT / "scripts" / f"run_train_{name}_ranktable.sh").is_file()


def test_trainer_args_split():
    cfg, ov = L.split_trainer_args(["--config", "a.yaml", "--resume", "auto", "x.y=1", "--no_progress", "z=2",
                                    "--init_from", "w=3.ckpt", "--device_target", "CPU"])
    assert (cfg, ov) == ("a.yaml", ["x.y=1", "z=2"])
    assert L.device_target_of(["--device_target", "CPU"]) == "CPU" and L.device_target_of([]) == "auto"


def test_msrun_dry_run_prints_the_command(capsys, tmp_path):
    code, out, err = run_main(["msrun", "ddpm", "--worker_num", "2", "--local_worker_num", "1", "--node_rank", "1",
                               "--log_dir", str(tmp_path), "--dry_run", "--", "--config", DIGITS, "--device_target",
                               "CPU", "train.steps=3"], capsys)
    assert code == 0 and err == ""
    cmd = out.splitlines()[-1]
    assert cmd.startswith("$ ") and "--node_rank=1" in cmd and "--master_addr=0.0.0.0" in cmd
    assert cmd.endswith(f"{ROOT / 'scripts' / 'train_ddpm.py'} --config {DIGITS} --device_target CPU train.steps=3")
    assert "node 1 of 2: ranks 1..1 of 2" in out


def test_missing_rank_named_from_the_scheduler_log(tmp_path):
    plan = L.plan_msrun(2, 1, "127.0.0.1", 8118, 0, str(tmp_path), 30, check_port=False)
    (tmp_path / "scheduler.log").write_text(
        "[WARNING] DISTRIBUTED ProcessRegister] The new node: 0(role: MS_WORKER), rank id: 0, device id: 0, hostname: "
        "vm, ip: 127.0.0.1 is registered successfully. Currently registered node number: 1, expected node number: 2\n"
        "[WARNING] DISTRIBUTED BuildCluster] Topology build timed out., retry(30/30).\n")
    msg = L.explain_msrun_failure(plan)
    assert msg.startswith("rank(s) 1 never joined the cluster within --cluster_time_out=30 s: start node_rank 1")
    (tmp_path / "scheduler.log").write_text("[WARNING] DISTRIBUTED BuildCluster] Topology build timed out., retry(30/30).\n")
    assert "rank(s) 0, 1 never joined" in L.explain_msrun_failure(plan) and \
        "rank(s) 0 of this node started too slowly: raise --cluster_time_out" in L.explain_msrun_failure(plan)
    (tmp_path / "scheduler.log").unlink()
    (tmp_path / "worker_0.log").write_text("[INFO] x\nTraceback (most recent call last):\n"
                                           "FloatingPointError: loss became nan at step 7\n")
    assert L.explain_msrun_failure(plan) == (f"rank 0 failed: FloatingPointError: loss became nan at step 7 "
                                             f"(log: {tmp_path / 'worker_0.log'})")


# ------------------------------------------------------------------------------------- rank tables
def test_rank_table_env_per_rank_single_server(tmp_path):
    t = L.read_rank_table(table(tmp_path / "hccl_4p.json", [[0, 1, 2, 3]]))
    procs = L.ranktable_plan(t, 4, "0,1,2,3", None, tmp_path / "logs", present=list(range(8)))
    assert [p.env for p in procs][2] == {"DEVICE_ID": "2", "RANK_ID": "2", "RANK_SIZE": "4",
                                         "RANK_TABLE_FILE": str(t.path), "DEVICE_NUM": "4", "SERVER_ID": "0"}
    assert [p.log for p in procs] == [tmp_path / "logs" / f"rank_{i}" / "log_train" for i in range(4)]


def test_rank_table_multi_server_offset(tmp_path):
    """RANK_ID = DEVICE_NUM x SERVER_ID + i, as the originals' run_*_parallel.sh; RANK_SIZE counts
    every server's devices."""
    t = L.read_rank_table(table(tmp_path / "hccl_16p.json", [list(range(8)), list(range(8))]))
    assert t.rank_size == 16 and t.servers[1].server_id == "10.0.0.2"
    procs = L.ranktable_plan(t, 8, "0,1,2,3,4,5,6,7", 1, tmp_path, present=list(range(8)))
    assert [int(p.env["RANK_ID"]) for p in procs] == list(range(8, 16))
    assert {p.env["RANK_SIZE"] for p in procs} == {"16"} and {p.env["SERVER_ID"] for p in procs} == {"1"}
    with pytest.raises(L.LaunchError, match="lists 2 servers and none is this machine: set SERVER_ID"):
        L.ranktable_plan(t, 8, None, None, tmp_path, present=list(range(8)))
    with pytest.raises(L.LaunchError, match=r"SERVER_ID \(index into the 2 server\(s\) of hccl_16p.json\) must be in 0..1"):
        L.ranktable_plan(t, 8, None, 2, tmp_path, present=list(range(8)))


def _bad(tmp_path, text):
    p = tmp_path / "bad.json"
    p.write_text(text)
    return p


@pytest.mark.parametrize("make, kw, needle", [
    (lambda d: _bad(d, "{not json"), {}, "is not valid JSON"),
    (lambda d: _bad(d, '{"version": "1.0"}'), {}, "has no server_list"),
    (lambda d: _bad(d, '{"server_list": [{"device": [{"device_id": "x", "rank_id": "0"}]}]}'), {},
     "server_list[0].device[0] needs integer device_id and rank_id"),
    (lambda d: _bad(d, '{"server_list": [{"device": [{"device_id": "0", "rank_id": "1"}]}]}'), {},
     "rank_id values must be 0..0, each once; got [1]"),
    (lambda d: d / "none.json", {}, "rank table not found"),
    (lambda d: table(d / "t.json", [[0, 1]]), dict(device_num=4), "DEVICE_NUM=4 disagrees with the rank table t.json, "
     "which gives server 0 (10.0.0.1) 2 device(s)"),
    (lambda d: table(d / "t.json", [[0, 1]]), dict(devices="0,1,2"), "is not matched with the device list 0,1,2"),
    (lambda d: table(d / "t.json", [[0, 1]]), dict(devices="0,5"), "device 5 is not in the rank table t.json"),
    (lambda d: table(d / "t.json", [[0, 1]]), dict(devices="1,0"), "gives device 1 of server 0 rank_id 1, but the "
     "launch order gives it RANK_ID=0"),
    (lambda d: table(d / "t.json", [[0, 1]]), dict(devices="0,0"), "names device 0 twice"),
    (lambda d: table(d / "t.json", [[6, 7]]), dict(present=[0, 1, 2, 3]), "names device 6, which does not exist on "
     "this server (it has devices 0,1,2,3)"),
    (lambda d: table(d / "t.json", [[0, 1]]), dict(present=[]), "this server has no Ascend devices"),
    (lambda d: table(d / "t.json", [[0, 1]], server_count="2"), {}, "server_count=2 but server_list has 1"),
])
def test_rank_table_errors(tmp_path, make, kw, needle):
    with pytest.raises(L.LaunchError) as exc:
        t = L.read_rank_table(make(tmp_path))
        L.ranktable_plan(t, **{"log_dir": tmp_path, "present": [0, 1], **kw})
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_ranktable_dry_run_cpu_rehearsal_and_ascend_refusal(tmp_path, capsys):
    t = table(tmp_path / "hccl_2p.json", [[0, 1]])
    code, out, err = run_main(["ranktable", "ddpm", "--rank_table", str(t), "--log_dir", str(tmp_path / "logs"),
                               "--dry_run", "--", "--config", DIGITS, "--device_target", "CPU"], capsys)
    assert code == 0 and err == ""
    assert f"DEVICE_ID=1 RANK_ID=1 RANK_SIZE=2 RANK_TABLE_FILE={t} DEVICE_NUM=2 SERVER_ID=0 -> " \
           f"{tmp_path / 'logs' / 'rank_1' / 'log_train'}" in out
    if L.local_ascend_devices() is None:  # this machine: no Ascend cards, so a real rank-table launch is refused
        code, out, err = run_main(["ranktable", "ddpm", "--rank_table", str(t), "--", "--config", DIGITS], capsys)
        assert code == 2 and "this server has no Ascend devices" in err


def test_supervisor_log_per_rank_and_a_failing_rank_stops_the_others(tmp_path):
    t = L.read_rank_table(table(tmp_path / "hccl_3p.json", [[0, 1, 2]]))
    procs = L.ranktable_plan(t, None, None, None, tmp_path / "logs", check_present=False)
    code = ("import os, sys, time; r = os.environ['RANK_ID']; print('rank', r, 'device', os.environ['DEVICE_ID'], "
            "'of', os.environ['RANK_SIZE'], flush=True)\n"
            "if r == '1': time.sleep(0.5); print('error: disk full'); sys.exit(3)\n"
            "time.sleep(120)")
    said = []
    start = time.time()
    rc = L.run_ranks(procs, [sys.executable, "-c", code], dict(os.environ), say=said.append, poll=0.1)
    assert rc == 3 and time.time() - start < 30  # the sleepers were stopped, not waited for
    for r in range(3):
        assert (tmp_path / "logs" / f"rank_{r}" / "log_train").read_text().startswith(f"rank {r} device {r} of 3")
    assert any("rank 1, device 1" in s for s in said)


def test_supervisor_success(tmp_path):
    t = L.read_rank_table(table(tmp_path / "hccl_2p.json", [[0, 1]]))
    procs = L.ranktable_plan(t, None, None, None, tmp_path / "logs", check_present=False)
    said = []
    rc = L.run_ranks(procs, [sys.executable, "-c", "print('ok')"], dict(os.environ), say=said.append, poll=0.1)
    assert rc == 0 and said[-1] == "all 2 rank(s) finished"


def test_python_side_checks_the_rank_it_was_given():
    env = {"RANK_TABLE_FILE": "/x/hccl.json", "RANK_ID": "3", "RANK_SIZE": "8"}
    check_rank_env(3, 8, env)
    with pytest.raises(RuntimeConfigError, match="communication init gave rank 2 of 8, but the rank table launch "
                                                 "exported RANK_ID=3 RANK_SIZE=8"):
        check_rank_env(2, 8, env)
    check_rank_env(2, 8, {**env, "MS_ROLE": "MS_WORKER"})  # msrun's RANK_ID is not a rank table's
    with pytest.raises(RuntimeConfigError):
        check_rank_env(2, 8, {**env, "MS_ROLE": "MS_WORKER", "MIND_DIFFUSION_LAUNCHER": "ranktable"})


# ------------------------------------------------------------------------------------- shell scripts
def _sh(script, *args, **env):
    return subprocess.run(["bash", str(ROOT / "scripts" / script), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHON": sys.executable, **env})


def test_wukong_run_train_parallel_keeps_the_original_arguments(tmp_path):
    t = table(tmp_path / "hccl_2p.json", [[0, 1]])
    p = _sh("run_train_parallel.sh", "2", "0,1", str(t), "--device_target", "CPU", DRY_RUN="1",
            OUTPUT=str(tmp_path / "out"))
    assert p.returncode == 0, p.stderr
    assert f"DEVICE_ID=0 RANK_ID=0 RANK_SIZE=2 RANK_TABLE_FILE={t} DEVICE_NUM=2 SERVER_ID=0 -> " \
           f"{tmp_path / 'out' / 'rank_0' / 'log_train'}" in p.stdout
    assert "train_ldm.py --config configs/wukong/train-finetune.yaml" in p.stdout
    p = _sh("run_train_parallel.sh", "3", "0,1,2", str(t), DRY_RUN="1", OUTPUT=str(tmp_path / "out"))
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("error: DEVICE_NUM=3 disagrees")
    p = _sh("run_train_parallel.sh", "2", "0,1")
    assert p.returncode == 2 and "Usage: bash scripts/run_train_parallel.sh [DEVICE_NUM]" in p.stderr


# ------------------------------------------------------------------------------------------ GLIDE
GLIDE_GEN = str(ROOT / "configs" / "glide" / "train-gen.yaml")


def test_glide_trainer_batch_is_per_worker_and_its_config_is_checked(capsys, tmp_path):
    cfg = L.preflight(TRAINERS["glide"], ["--config", GLIDE_GEN, "--is_super_res", "false", "train.batch_size=10"], 8,
                      ROOT)
    assert L.global_batch(TRAINERS["glide"], cfg, 8) == 80 and cfg.model.stage == "base"
    code, out, err = run_main(["msrun", "glide", "--worker_num", "2", "--dry_run", "--log_dir", str(tmp_path), "--",
                               "--config", GLIDE_GEN, "train.btch_size=2"], capsys)
    assert code == 2 and "unknown config key 'train.btch_size'" in err and len(err.strip().splitlines()) == 1
    p = _sh("run_train_glide_msrun.sh", "2", GLIDE_GEN, "--device_target", "CPU", DRY_RUN="1",
            LOG_DIR=str(tmp_path / "logs"), MASTER_PORT=str(L.free_port()))
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1].endswith(f"scripts/train_glide.py --config {GLIDE_GEN} --no_progress "
                                              f"--device_target CPU")


def _glide_files(tmp_path):
    pre, data = tmp_path / "pre", tmp_path / "data"
    pre.mkdir()
    data.mkdir()
    for name in ("glide_gen.ckpt", "glide_super_res.ckpt", "cog-pretrain.model"):
        (pre / name).write_bytes(b"x")
    return {"DATA_PATH": str(data), "PRETRAINED_MODEL_PATH": str(pre) + "/", "OUTPUT": str(tmp_path / "out")}


@pytest.mark.parametrize("script, ckpt, config", [
    ("run_gen_finetune_dist.sh", "glide_gen.ckpt", "train-gen.yaml"),
    ("run_super_res_finetune_dist.sh", "glide_super_res.ckpt", "train-super-res.yaml"),
])
def test_glide_finetune_launchers_keep_the_original_arguments(tmp_path, script, ckpt, config):
    t = table(tmp_path / "hccl_2p.json", [[0, 1]])
    env = _glide_files(tmp_path)
    p = _sh(script, "2", "0,1", str(t), "--device_target", "CPU", "train.batch_size=2", DRY_RUN="1", **env)
    assert p.returncode == 0, p.stderr
    out = tmp_path / "out"
    assert f"DEVICE_ID=1 RANK_ID=1 RANK_SIZE=2 RANK_TABLE_FILE={t} DEVICE_NUM=2 SERVER_ID=0 -> " \
           f"{out / 'rank_1' / 'log_train'}" in p.stdout
    pre = tmp_path / "pre"
    assert p.stdout.splitlines()[-1].endswith(
        f"scripts/train_glide.py --config {ROOT / 'configs' / 'glide' / config} --no_progress train.output_dir={out} "
        f"data.path={tmp_path / 'data'} init.checkpoint={pre / ckpt} tokenizer.sp_model={pre / 'cog-pretrain.model'} "
        f"--device_target CPU train.batch_size=2")
    assert not out.exists()  # a dry run writes nothing (and a real one never deletes OUTPUT)
    cases = [
        (["2", "0,1"], {}, f"Usage: bash scripts/{script} [DEVICE_NUM] [VISIABLE_DEVICES(0,1,2,3,4,5,6,7)] "
                           f"[RANK_TABLE_FILE]"),
        (["9", "0,1", str(t)], {}, "error: DEVICE_NUM=9 is not in [1,8]"),
        (["2", "0", str(t)], {}, "error: DEVICE_NUM=2 is not matched with VISIABLE_DEVICES=0"),
        (["2", "0,1", str(tmp_path / "none.json")], {}, "is not a file"),
        (["2", "0,1", str(t)], {"PRETRAINED_MODEL_PATH": str(tmp_path)}, f"error: {tmp_path / ckpt} not found"),
        (["2", "0,1", str(t)], {"DATA_PATH": str(tmp_path / "nope")}, "error: DATA_PATH="),
    ]
    if script == "run_gen_finetune_dist.sh":  # the launcher's own checks (each start costs seconds: once)
        cases.append((["3", "0,1,2", str(t), "--device_target", "CPU"], {},
                      "error: DEVICE_NUM=3 disagrees with the rank table"))
    for args, extra, needle in cases:
        p = _sh(script, *args, DRY_RUN="1", **{**env, **extra})
        assert p.returncode == 2 and needle in p.stderr.strip().splitlines()[-1], (args, p.stderr)
    assert not out.exists()


# ------------------------------------------------------------------------------------- DreamBooth
SHAPES_DB = str(ROOT / "configs" / "shapes" / "dreambooth.yaml")


def _db_instances(folder: Path, n: int = 2) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(folder / f"sks_{i}.png")
    return folder


def _db_args(tmp_path, *extra):
    return ["--train_config", SHAPES_DB, "--pretrained_model_path", str(ROOT / "models" / "shapes_zh"),
            "--train_data_path", str(_db_instances(tmp_path / "inst")), "--reg_data_path", str(tmp_path / "cls"),
            "--token", "sks", "--output_path", str(tmp_path / "out"), *extra]


def test_dreambooth_trainer_reads_the_original_flags_and_its_batch_is_per_worker(capsys, tmp_path):
    spec = TRAINERS["db"]
    cfg = L.preflight(spec, _db_args(tmp_path, "--train_batch_size", "3", "--device_target", "CPU", "train.steps=5"),
                      4, ROOT)
    assert (cfg.dreambooth.token, cfg.dreambooth.instance_data, cfg.train.output_dir) == (
        "sks", str(tmp_path / "inst"), str(tmp_path / "out"))
    assert cfg.train.steps == 5 and cfg.model.family == "shapes-zh"  # the model folder's model
    assert L.global_batch(spec, cfg, 4) == 12  # 3 instance rows on each of 4 workers
    args = _db_args(tmp_path, "--class_word=猫", "--use_parallel", "True", "--device_target", "CPU")
    code, out, err = run_main(["msrun", "db", "--worker_num", "2", "--dry_run", "--log_dir", str(tmp_path / "l"),
                               "--", *args], capsys)
    assert code == 0 and err == ""
    assert out.splitlines()[-1].endswith("scripts/run_db_train.py " + " ".join(args))  # passed through verbatim
    assert not (tmp_path / "out").exists() and not (tmp_path / "cls").exists()


@pytest.mark.parametrize("change, needle", [
    ({"--train_data_path": "{tmp}/nowhere"}, "instance folder not found: {tmp}/nowhere (--train_data_path)"),
    ({"--train_data_path": "{tmp}/empty"}, "instance folder {tmp}/empty holds no images"),
    ({"--train_config": "{tmp}/no.yaml"}, "--train_config not found: {tmp}/no.yaml"),
    ({"--pretrained_model_path": "{tmp}"}, "init.checkpoint not found: {tmp}/wukong-huahua-ms.ckpt"),
    ({"--epochs": "five"}, "run_db_train.py: argument --epochs: invalid int value: 'five'"),
    ({"--use_parallel": "yes"}, "run_db_train.py: argument --use_parallel: expected True or False, got 'yes'"),
    ({"--tokn": "sks"}, "run_db_train.py: unrecognized arguments: --tokn"),
    ({"train.btch_size=2": None}, "unknown config key 'train.btch_size'"),
    ({"train.start_learning_rate=-1": None}, "train.start_learning_rate"),
])
def test_launcher_refuses_bad_dreambooth_flags_with_one_line(tmp_path, capsys, change, needle):
    (tmp_path / "empty").mkdir()
    args = _db_args(tmp_path)
    for flag, value in change.items():
        if value is None:
            args.append(flag)
            continue
        value = value.format(tmp=tmp_path)
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    code, out, err = run_main(["msrun", "db", "--worker_num", "2", "--dry_run", "--", *args], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and needle.format(tmp=tmp_path) in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cls").exists()


def test_dreambooth_shell_launchers_pass_train_config(tmp_path):
    t = table(tmp_path / "hccl_2p.json", [[0, 1]])
    args = _db_args(tmp_path, "--device_target", "CPU")
    p = _sh("run_train_db_ranktable.sh", str(t), *args[1:], DRY_RUN="1", LOG_DIR=str(tmp_path / "logs"))
    assert p.returncode == 0, p.stderr
    assert f"DEVICE_ID=1 RANK_ID=1 RANK_SIZE=2 RANK_TABLE_FILE={t} DEVICE_NUM=2 SERVER_ID=0 -> " \
           f"{tmp_path / 'logs' / 'rank_1' / 'log_train'}" in p.stdout
    assert p.stdout.splitlines()[-1].endswith(f"scripts/run_db_train.py --train_config {SHAPES_DB} --no_progress "
                                              + " ".join(args[2:]))
    p = _sh("run_train_db_msrun.sh", "2", str(tmp_path / "none.yaml"), *args[2:], DRY_RUN="1")
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == \
        f"error: --train_config not found: {tmp_path / 'none.yaml'} (a YAML such as configs/shapes/dreambooth.yaml, " \
        f"or the original's train_db_config.json)"
    assert not (tmp_path / "out").exists()
