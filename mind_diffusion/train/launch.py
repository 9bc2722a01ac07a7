"""One launcher for every trainer: msrun across nodes, and HCCL rank tables.

Every trainer script (``scripts/train_ddpm.py``, ``train_ldm.py``, ``train_vae.py`` …) is started
the same way; ``scripts/launch_train.py`` names them (:class:`TrainerSpec`, one line each) and the
shell launchers call it. Everything that can be wrong is checked here, before any process
starts, and refused with one line (:class:`LaunchError`, exit 2):

- the trainer's config (loaded and range-checked as the trainer would) and a worker count that
  does not divide the global batch (``batch="global"`` trainers: DDPM; per-worker batches, as in
  Wukong-Huahua's recipe, fit any count);
- msrun: worker counts (``--worker_num`` total, ``--local_worker_num`` per node, equal on every
  node), ``--node_rank`` in range, a master port outside 1024..65535 or already taken on the
  master node;
- rank tables: a file that does not parse or is not an HCCL table, ``DEVICE_NUM`` / the device
  list disagreeing with this server's entry, devices missing on this server, a table whose
  ``rank_id`` disagrees with the ``SERVER_ID`` offset (``RANK_ID = DEVICE_NUM x SERVER_ID + i``, as
  Wukong-Huahua's and Taichu-GLIDE's ``run_*_parallel.sh`` / ``run_*_dist.sh`` do).

msrun mode builds one msrun command (``msrun_command``) and, when it fails, reads its logs to say
which rank never joined the cluster or which rank failed first (``explain_msrun_failure``).
Rank-table mode starts one process per local device with ``DEVICE_ID``, ``RANK_ID``, ``RANK_SIZE``,
``RANK_TABLE_FILE``, ``DEVICE_NUM`` and ``SERVER_ID`` exported and its log in
``<log_dir>/rank_<RANK_ID>/log_train``; when one rank fails the others are stopped. With
``--device_target CPU`` the same launch rehearses on a machine without Ascend cards: MindSpore's
CPU collectives stand in for HCCL (a scheduler process plus ``MS_*`` variables, as msrun sets them).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .. import _env
from ..config import ConfigError, load_config
from .data import DataError, check_global_batch
from .validate import check_train_section


class LaunchError(ValueError):
    """A launch request that cannot work; the message says what and how to fix it."""


@dataclass(frozen=True)
class TrainerSpec:
    """A trainer the launcher can start.

    script: path of the entry point, relative to the repository root.
    defaults: the family's config schema (``ddpm_config_defaults`` …).
    batch: ``"global"`` when ``train.batch_size`` is the global batch (split over the workers),
        ``"per_worker"`` when it is each worker's batch (global = batch x workers).
    config_required: whether the script needs ``--config``.
    load: for a script whose command line is not ``--config CONFIG.yaml key=value ...`` (DreamBooth's
        original flags), ``load(trainer_args) -> config``: reads and checks it as the script will,
        raising ``ValueError`` (``ConfigError``, ``DataError``) with one line when it cannot work.
    """

    script: str
    defaults: Callable[[], dict]
    batch: str = "global"
    config_required: bool = True
    load: Callable[[Sequence[str]], object] | None = None


# --------------------------------------------------------------------------- small checks
def check_count(value, what: str, low: int = 1, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``, or :class:`LaunchError` naming ``what``."""
    try:
        n = int(str(value).strip())
    except ValueError:
        raise LaunchError(f"{what} must be an integer, got {value!r}") from None
    if n < low or (high is not None and n > high):
        rng = f">= {low}" if high is None else f"in {low}..{high}"
        raise LaunchError(f"{what} must be {rng}, got {n}")
    return n


def parse_devices(text: str) -> list[int]:
    """'0,1,2,3' -> [0, 1, 2, 3] (the originals' VISIABLE_DEVICES argument)."""
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise LaunchError(f"device list {text!r} is empty: give device ids like 0,1,2,3")
    out = [check_count(s, f"device id {s!r} in {text!r}", 0) for s in items]
    dup = sorted({d for d in out if out.count(d) > 1})
    if dup:
        raise LaunchError(f"device list {text!r} names device {dup[0]} twice")
    return out


def is_local_address(host: str) -> bool:
    """True when ``host`` resolves to an address of this machine (a socket can bind to it)."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise LaunchError(f"master address {host!r} does not resolve: give the master node's IP") from None
    for family, _, _, _, addr in infos:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            try:
                s.bind((addr[0], 0))
                return True
            except OSError:
                continue
    return False


def port_free(host: str, port: int) -> bool:
    """Whether a TCP server can listen on ``host:port`` now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- the trainer's config
def split_trainer_args(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """(--config value, config overrides) of a trainer command line: overrides are the bare
    ``key=value`` words; flags and their values pass through untouched."""
    config, overrides, i, args = None, [], 0, list(args)
    while i < len(args):
        a = args[i]
        if a == "--config" and i + 1 < len(args):
            config, i = args[i + 1], i + 2
            continue
        if a.startswith("--config="):
            config = a.split("=", 1)[1]
        elif not a.startswith("-") and "=" in a and not (i and args[i - 1].startswith("--")
                                                          and "=" not in args[i - 1]
                                                          and args[i - 1] not in VALUELESS_FLAGS):
            overrides.append(a)
        i += 1
    return config, overrides


#: trainer flags that take no value (a ``key=value`` after them is an override)
VALUELESS_FLAGS = {"--overwrite", "--no_progress", "--strict"}


def global_batch(spec: TrainerSpec, cfg, world: int) -> int:
    """The global batch of one update for ``world`` workers (after checking it splits evenly)."""
    t = cfg.train
    batch = int(t.batch_size)
    accum = int(t.get("grad_accum_steps", 1) or 1)
    if spec.batch == "per_worker":
        return batch * world * accum
    try:
        check_global_batch(batch, world, accum)  # the trainers' own rule
    except DataError as exc:
        fits = [n for n in range(1, min(batch, 64) + 1) if batch % (n * accum) == 0]
        raise LaunchError(f"{exc}; or launch a worker count that divides it: {fits}") from None
    return batch


def preflight(spec: TrainerSpec, trainer_args: Sequence[str], world: int, root: Path):
    """Load and range-check the trainer's config as the trainer will, and check that ``world``
    workers split its batch. Returns the config."""
    if spec.load is not None:
        try:
            cfg = spec.load(list(trainer_args))
        except ValueError as exc:  # ConfigError and DataError are ValueErrors
            raise LaunchError(str(exc)) from None
    else:
        config, overrides = split_trainer_args(trainer_args)
        if config is None and spec.config_required:
            raise LaunchError(f"{spec.script} needs --config CONFIG.yaml")
        if config is not None and not Path(config).is_file():
            raise LaunchError(f"config file not found: {config}")
        try:
            cfg = load_config(config, overrides, spec.defaults())
        except ConfigError as exc:
            raise LaunchError(str(exc)) from None
    try:
        check_train_section(cfg.train, zero_ok=("steps", "ckpt_every") if spec.batch == "per_worker" else ())
    except ConfigError as exc:
        raise LaunchError(str(exc)) from None
    global_batch(spec, cfg, world)
    return cfg


# --------------------------------------------------------------------------- msrun
@dataclass
class MsrunPlan:
    worker_num: int
    local_worker_num: int
    master_addr: str
    master_port: int
    node_rank: int
    log_dir: str
    cluster_time_out: int
    join: bool = True
    msrun_master_addr: str = ""  # what msrun is given (see plan_msrun)
    is_master: bool = True
    notes: list = field(default_factory=list)

    @property
    def nodes(self) -> int:
        return self.worker_num // self.local_worker_num

    @property
    def local_ranks(self) -> list[int]:
        first = self.node_rank * self.local_worker_num
        return list(range(first, first + self.local_worker_num))


def plan_msrun(worker_num, local_worker_num=None, master_addr="127.0.0.1", master_port=8118, node_rank=0,
               log_dir="runs/msrun_logs", cluster_time_out=300, join=True, check_port=True) -> MsrunPlan:
    """Check an msrun request; every problem is one :class:`LaunchError` line.

    msrun starts a scheduler on every node whose ``--master_addr`` is one of its own addresses, so
    when several nodes are rehearsed on one machine, the nodes other than 0 are given the wildcard
    address 0.0.0.0 (which reaches this machine's scheduler) instead of a second scheduler."""
    worker_num = check_count(worker_num, "--worker_num (total workers)")
    local = worker_num if local_worker_num in (None, "") else \
        check_count(local_worker_num, "--local_worker_num (workers on this node)", 1, worker_num)
    if worker_num % local:
        raise LaunchError(f"--worker_num={worker_num} is not a multiple of --local_worker_num={local}: every node "
                          f"runs the same number of workers (msrun gives node k ranks k*{local} .. k*{local}+{local - 1})")
    nodes = worker_num // local
    node_rank = check_count(node_rank, "--node_rank", 0)
    if node_rank >= nodes:
        raise LaunchError(f"--node_rank={node_rank} is out of range: {worker_num} workers at {local} per node make "
                          f"{nodes} node(s), ranks 0..{nodes - 1}")
    port = check_count(master_port, "--master_port", 1024, 65535)
    time_out = check_count(cluster_time_out, "--cluster_time_out (seconds)", 1)
    local_master = is_local_address(master_addr)
    plan = MsrunPlan(worker_num, local, str(master_addr), port, node_rank, str(log_dir), time_out, bool(join),
                     str(master_addr), local_master and node_rank == 0)
    if node_rank == 0 and not local_master:
        plan.notes.append(f"--master_addr {master_addr} is not this machine: node 0 starts no scheduler here "
                          f"(one must run on {master_addr})")
    if node_rank > 0 and local_master:
        plan.msrun_master_addr = "0.0.0.0"
        plan.notes.append(f"--master_addr {master_addr} is this machine: node {node_rank} joins the scheduler of "
                          f"node 0 through 0.0.0.0 (msrun would start a second one)")
    if plan.is_master and check_port and not port_free(master_addr, port):
        raise LaunchError(f"--master_port {port} is already in use on {master_addr}: pick a free port "
                          f"(MASTER_PORT=...) or stop the job holding it")
    return plan


def msrun_command(plan: MsrunPlan, msrun: str, script: str, trainer_args: Sequence[str]) -> list[str]:
    """The msrun command line of one node (the worker script and its arguments at the end)."""
    return [str(msrun), f"--worker_num={plan.worker_num}", f"--local_worker_num={plan.local_worker_num}",
            f"--master_addr={plan.msrun_master_addr}", f"--master_port={plan.master_port}",
            f"--node_rank={plan.node_rank}", f"--log_dir={plan.log_dir}", f"--join={plan.join}",
            f"--cluster_time_out={plan.cluster_time_out}", str(script), *trainer_args]


_REGISTERED = re.compile(r"rank id: (\d+).*registered successfully")
_ERROR_LINE = re.compile(r"^(error: .*|\w*(Error|Exception): .*)$")


def last_error(log: Path) -> str | None:
    """The last one-line error (``error: …`` from a script, or an exception line) of a log."""
    if not log.is_file():
        return None
    found = None
    for line in log.read_text(errors="replace").splitlines():
        line = line.strip()
        if _ERROR_LINE.match(line) and not line.startswith("[") and "C++ Call Stack" not in line:
            found = line
    return found


def explain_msrun_failure(plan: MsrunPlan) -> str:
    """One line: which rank never joined the cluster, or which rank failed first and why."""
    log_dir = Path(plan.log_dir)
    sched = log_dir / "scheduler.log"
    if sched.is_file():
        text = sched.read_text(errors="replace")
        joined = {int(m) for m in _REGISTERED.findall(text)}
        missing = sorted(set(range(plan.worker_num)) - joined)
        if missing and "timed out" in text.lower():
            remote = [r for r in missing if r not in plan.local_ranks]
            local = [r for r in missing if r in plan.local_ranks]
            what = []
            if remote:
                nodes = sorted({r // plan.local_worker_num for r in remote})
                what.append(f"start node_rank {', '.join(map(str, nodes))} with the same --master_addr "
                            f"{plan.master_addr} --master_port {plan.master_port}")
            if local:
                what.append(f"rank(s) {', '.join(map(str, local))} of this node started too slowly: raise "
                            f"--cluster_time_out")
            return (f"rank(s) {', '.join(map(str, missing))} never joined the cluster within "
                    f"--cluster_time_out={plan.cluster_time_out} s: {'; '.join(what)}; no training step ran "
                    f"and nothing was written")
    failed = []
    for rank in plan.local_ranks:
        log = log_dir / f"worker_{rank}.log"
        err = last_error(log)
        if err:
            failed.append((log.stat().st_mtime, rank, err, log))
    if failed:
        _, rank, err, log = min(failed, key=lambda f: (("meta server" in f[2].lower()
                                                        or "cluster" in f[2].lower()), f[0]))
        if "cluster" in err.lower() and not sched.is_file():
            return (f"rank {rank} could not build the cluster with the master {plan.master_addr}:"
                    f"{plan.master_port} within --cluster_time_out={plan.cluster_time_out} s (is node 0 "
                    f"running, and the address reachable?); log: {log}")
        return f"rank {rank} failed: {err} (log: {log})"
    return f"msrun failed; see the logs in {log_dir}"


# --------------------------------------------------------------------------- rank tables
@dataclass(frozen=True)
class RankDevice:
    device_id: int
    rank_id: int
    device_ip: str = ""


@dataclass(frozen=True)
class RankServer:
    server_id: str
    devices: tuple


@dataclass(frozen=True)
class RankTable:
    path: Path
    servers: tuple

    @property
    def rank_size(self) -> int:
        return sum(len(s.devices) for s in self.servers)


def read_rank_table(path) -> RankTable:
    """An HCCL rank table (version 1.0 JSON: ``server_list[].device[]`` with ``device_id`` and
    ``rank_id``), checked: unique rank ids 0..N-1, unique devices per server."""
    path = Path(path)
    if not path.is_file():
        raise LaunchError(f"rank table not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LaunchError(f"rank table {path} is not valid JSON ({exc}): regenerate it with hccl_tools.py") from None
    servers = data.get("server_list") if isinstance(data, dict) else None
    if not isinstance(servers, list) or not servers:
        raise LaunchError(f"rank table {path} has no server_list: an HCCL rank table lists "
                          f"server_list[].device[] (device_id, device_ip, rank_id)")
    out, ranks = [], []
    for si, server in enumerate(servers):
        devs = server.get("device") if isinstance(server, dict) else None
        if not isinstance(devs, list) or not devs:
            raise LaunchError(f"rank table {path}: server_list[{si}] has no device list")
        parsed = []
        for di, dev in enumerate(devs):
            try:
                parsed.append(RankDevice(int(dev["device_id"]), int(dev["rank_id"]), str(dev.get("device_ip", ""))))
            except (KeyError, TypeError, ValueError):
                raise LaunchError(f"rank table {path}: server_list[{si}].device[{di}] needs integer device_id "
                                  f"and rank_id, got {dev!r}") from None
        ids = [d.device_id for d in parsed]
        if len(set(ids)) != len(ids):
            raise LaunchError(f"rank table {path}: server_list[{si}] names a device twice ({ids})")
        ranks += [d.rank_id for d in parsed]
        out.append(RankServer(str(server.get("server_id", si)), tuple(parsed)))
    if sorted(ranks) != list(range(len(ranks))):
        raise LaunchError(f"rank table {path}: rank_id values must be 0..{len(ranks) - 1}, each once; got "
                          f"{sorted(ranks)}")
    count = data.get("server_count")
    if count is not None and str(count).strip().isdigit() and int(count) != len(out):
        raise LaunchError(f"rank table {path}: server_count={count} but server_list has {len(out)} server(s)")
    return RankTable(path.resolve(), tuple(out))


def local_ascend_devices() -> list[int] | None:
    """Ascend device ids present on this server (``/dev/davinci<N>``), or None when it has none."""
    found = sorted(int(p.name[len("davinci"):]) for p in Path("/dev").glob("davinci[0-9]*")
                   if p.name[len("davinci"):].isdigit())
    return found or None


def find_server(table: RankTable, server_id=None) -> int:
    """Index of this server in the table: ``server_id`` (SERVER_ID, an index) when given, else the
    entry whose server_id is one of this machine's addresses, else 0 for a one-server table."""
    n = len(table.servers)
    if server_id not in (None, "", "auto"):
        return check_count(server_id, f"SERVER_ID (index into the {n} server(s) of {table.path.name})", 0, n - 1)
    if n == 1:
        return 0
    for i, s in enumerate(table.servers):
        try:
            if is_local_address(s.server_id):
                return i
        except LaunchError:
            continue
    raise LaunchError(f"rank table {table.path} lists {n} servers and none is this machine: set SERVER_ID "
                      f"(0..{n - 1}) to this server's position in server_list")


@dataclass
class RankProcess:
    rank: int
    device_id: int
    env: dict
    log: Path


def ranktable_plan(table: RankTable, device_num=None, devices=None, server_id=None, log_dir="runs/ranktable_logs",
                   present: list[int] | None = None, check_present: bool = True) -> list[RankProcess]:
    """The processes of this server: ``RANK_ID = DEVICE_NUM x SERVER_ID + i`` for the i-th device of
    ``devices`` (default: this server's devices in table order), checked against the table.

    present: the device ids this server has (default: /dev/davinci*); ``check_present=False`` skips
    that check (the CPU rehearsal)."""
    si = find_server(table, server_id)
    server = table.servers[si]
    by_device = {d.device_id: d for d in server.devices}
    n_table = len(server.devices)
    device_num = n_table if device_num in (None, "") else check_count(device_num, "DEVICE_NUM", 1)
    if device_num != n_table:
        raise LaunchError(f"DEVICE_NUM={device_num} disagrees with the rank table {table.path.name}, which gives "
                          f"server {si} ({server.server_id}) {n_table} device(s): pass {n_table} or fix the table")
    devs = [d.device_id for d in server.devices] if devices in (None, "") else \
        (parse_devices(devices) if isinstance(devices, str) else [int(d) for d in devices])
    if len(devs) != device_num:
        raise LaunchError(f"DEVICE_NUM={device_num} is not matched with the device list {','.join(map(str, devs))} "
                          f"({len(devs)} device(s))")
    unknown = [d for d in devs if d not in by_device]
    if unknown:
        raise LaunchError(f"device {unknown[0]} is not in the rank table {table.path.name} for server {si} "
                          f"({server.server_id}), which lists devices "
                          f"{','.join(str(d.device_id) for d in server.devices)}")
    if check_present:
        present = local_ascend_devices() if present is None else present
        if not present:
            raise LaunchError("this server has no Ascend devices (no /dev/davinci<N>): rank tables launch on Ascend; "
                              "to rehearse the launch on CPU pass --device_target CPU to the trainer")
        missing = [d for d in devs if d not in present]
        if missing:
            raise LaunchError(f"the rank table names device {missing[0]}, which does not exist on this server "
                              f"(it has devices {','.join(map(str, present))})")
    rank_start = device_num * si
    procs = []
    for i, dev in enumerate(devs):
        rank = rank_start + i
        if by_device[dev].rank_id != rank:
            raise LaunchError(f"the rank table gives device {dev} of server {si} rank_id {by_device[dev].rank_id}, "
                              f"but the launch order gives it RANK_ID={rank} (DEVICE_NUM x SERVER_ID + {i}): list the "
                              f"devices in rank order or fix the table")
        env = {"DEVICE_ID": str(dev), "RANK_ID": str(rank), "RANK_SIZE": str(table.rank_size),
               "RANK_TABLE_FILE": str(table.path), "DEVICE_NUM": str(device_num), "SERVER_ID": str(si)}
        procs.append(RankProcess(rank, dev, env, Path(log_dir) / f"rank_{rank}" / "log_train"))
    return procs


#: the originals' environment for Ascend rank-table runs (each kept when already set)
ASCEND_ENV = {"GLOG_v": "3", "ASCEND_GLOBAL_LOG_LEVEL": "3", "ASCEND_GLOBAL_EVENT_ENABLE": "0",
              "ASCEND_SLOG_PRINT_TO_STDOUT": "0", "HCCL_CONNECT_TIMEOUT": "600"}


def cpu_rehearsal_env(procs: list[RankProcess], table: RankTable, port: int, time_out: int) -> dict:
    """MindSpore's CPU collectives in place of HCCL: the variables msrun would set (scheduler on
    127.0.0.1:port, one worker per rank, node id = RANK_ID). Only a one-server table can rehearse."""
    if len(table.servers) != 1:
        raise LaunchError(f"the CPU rehearsal runs every rank on this machine: use a one-server rank table "
                          f"(this one lists {len(table.servers)} servers)")
    return {"MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": str(port), "MS_WORKER_NUM": str(len(procs)),
            "MS_TOPO_TIMEOUT": str(time_out)}


def _stop(popens, grace: float = 10.0):
    for p in popens:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + grace
    for p in popens:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def run_ranks(procs: list[RankProcess], cmd: list[str], base_env: dict, scheduler_env: dict | None = None,
              log_dir: Path | None = None, poll: float = 0.5, say=print) -> int:
    """Start one process per rank (each in its own session, stdout + stderr to its log), wait; when
    one fails the others are stopped (SIGTERM, SIGKILL after 10 s). Returns 0 or the first failure's
    exit code, after one line naming the rank and its error."""
    popens, sched = [], None
    handles = []
    try:
        if scheduler_env is not None:
            log = Path(log_dir) / "scheduler.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            fh = open(log, "w")
            handles.append(fh)
            sched = subprocess.Popen(cmd, env={**base_env, **scheduler_env, "MS_ROLE": "MS_SCHED"},
                                     stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        for rp in procs:
            rp.log.parent.mkdir(parents=True, exist_ok=True)
            fh = open(rp.log, "w")
            handles.append(fh)
            env = {**base_env, **rp.env}
            if scheduler_env is not None:
                env.update(scheduler_env, MS_ROLE="MS_WORKER", MS_NODE_ID=rp.env["RANK_ID"])
            say(f"start training for rank {rp.rank}, device {rp.device_id}: log {rp.log}")
            popens.append(subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                           start_new_session=True))
        while True:
            codes = [p.poll() for p in popens]
            bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                i, code = bad[0]
                err = last_error(procs[i].log) or f"exit code {code}"
                print(f"error: rank {procs[i].rank} (device {procs[i].device_id}) failed: {err}; stopping the "
                      f"other ranks (log: {procs[i].log})", file=sys.stderr, flush=True)
                _stop(popens + ([sched] if sched else []))
                return code if code > 0 else 1
            if all(c == 0 for c in codes):
                if sched is not None:
                    try:
                        sched.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        _stop([sched])
                say(f"all {len(procs)} rank(s) finished")
                return 0
            time.sleep(poll)
    except KeyboardInterrupt:
        say("interrupted: stopping every rank")
        _stop(popens + ([sched] if sched else []))
        return 130
    finally:
        for fh in handles:
            fh.close()


def child_env(root: Path, python: str, extra: dict | None = None) -> dict:
    """This environment with the repository on PYTHONPATH and ``python``'s folder first on PATH (msrun
    starts workers with the first ``python`` on PATH)."""
    env = dict(os.environ)
    for key in _env.APPLIED:  # this process's defaults, not the user's: each child applies its own
        env.pop(key, None)    # (msrun's scheduler keeps MindSpore's warnings, see mind_diffusion/_env.py)
    env["PATH"] = f"{Path(python).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(extra or {})
    return env


def device_target_of(trainer_args: Sequence[str]) -> str:
    args = list(trainer_args)
    for i, a in enumerate(args):
        if a == "--device_target" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--device_target="):
            return a.split("=", 1)[1]
    return "auto"


# --------------------------------------------------------------------------- command line
def build_parser(trainers: dict):
    import argparse

    p = argparse.ArgumentParser(
        prog="launch_train.py", description="Start a trainer on several workers: msrun (any device, "
        "several nodes) or an HCCL rank table (Ascend; --device_target CPU rehearses it). Trainer "
        "arguments follow '--'.")
    sub = p.add_subparsers(dest="how", required=True)
    m = sub.add_parser("msrun", help="msrun: --worker_num in total, --local_worker_num on this node")
    m.add_argument("trainer", choices=sorted(trainers))
    m.add_argument("--worker_num", required=True, help="workers in total (all nodes)")
    m.add_argument("--local_worker_num", default=None, help="workers on this node (default: all)")
    m.add_argument("--master_addr", default="127.0.0.1", help="address of node 0 (its scheduler)")
    m.add_argument("--master_port", default=8118, help="scheduler port on node 0")
    m.add_argument("--node_rank", default=0, help="this node's index, 0 .. nodes-1")
    m.add_argument("--log_dir", default="runs/msrun_logs", help="msrun's logs: worker_<rank>.log, scheduler.log")
    m.add_argument("--cluster_time_out", default=300, help="seconds to wait for every rank to join")
    m.add_argument("--join", default="True", choices=["True", "False"], help="wait for the workers (msrun --join)")
    r = sub.add_parser("ranktable", help="HCCL rank table: one process per device of this server")
    r.add_argument("trainer", choices=sorted(trainers))
    r.add_argument("--rank_table", required=True, help="HCCL rank table JSON (hccl_tools.py)")
    r.add_argument("--device_num", default=None, help="devices on this server (default: the table's)")
    r.add_argument("--devices", default=None, help="device ids in rank order, e.g. 0,1,2,3 (default: the table's)")
    r.add_argument("--server_id", default=os.environ.get("SERVER_ID"),
                   help="this server's index in server_list (default: $SERVER_ID, else found by address)")
    r.add_argument("--log_dir", default="runs/ranktable_logs", help="one folder per rank: rank_<id>/log_train")
    r.add_argument("--cluster_time_out", default=600, help="seconds to wait for every rank to connect")
    for q in (m, r):
        q.add_argument("--dry_run", action="store_true", help="check and print what would start, start nothing")
    return p


def _trainer_python():
    return os.environ.get("PYTHON") or sys.executable


def main(argv, trainers: dict, root: Path, say=print) -> int:
    """The launcher's command line; returns the exit code (2 and one line for bad input)."""
    argv = list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = build_parser(trainers).parse_args(argv[:cut])
    trainer_args = argv[cut + 1:]
    spec = trainers[args.trainer]
    root = Path(root).resolve()
    script = root / spec.script
    python = _trainer_python()
    try:
        if args.how == "msrun":
            plan = plan_msrun(args.worker_num, args.local_worker_num, args.master_addr, args.master_port,
                              args.node_rank, args.log_dir, args.cluster_time_out, args.join == "True",
                              check_port=not args.dry_run)
            preflight(spec, trainer_args, plan.worker_num, root)
            msrun = Path(python).parent / "msrun"
            if not msrun.exists():
                raise LaunchError(f"msrun not found next to {python}: install mindspore "
                                  f"(pip install -r requirements.txt) or set PYTHON")
            cmd = msrun_command(plan, str(msrun), str(script), trainer_args)
            for note in plan.notes:
                say(f"note: {note}")
            say(f"node {plan.node_rank} of {plan.nodes}: ranks {plan.local_ranks[0]}..{plan.local_ranks[-1]} of "
                f"{plan.worker_num}; logs {plan.log_dir}/worker_<rank>.log")
            say("$ " + " ".join(cmd))
            if args.dry_run:
                return 0
            Path(plan.log_dir).mkdir(parents=True, exist_ok=True)
            try:
                proc = subprocess.run(cmd, env=child_env(root, python), check=False)
            except KeyboardInterrupt:  # msrun got the same Ctrl-C and stops its workers
                print("interrupted: msrun stops this node's workers", file=sys.stderr, flush=True)
                return 130
            if proc.returncode != 0 and plan.join:
                print(f"error: {explain_msrun_failure(plan)}", file=sys.stderr, flush=True)
            return proc.returncode
        table = read_rank_table(args.rank_table)
        cpu = device_target_of(trainer_args).lower() == "cpu"
        procs = ranktable_plan(table, args.device_num, args.devices, args.server_id, args.log_dir,
                               check_present=not cpu)
        preflight(spec, trainer_args, table.rank_size, root)
        time_out = check_count(args.cluster_time_out, "--cluster_time_out (seconds)", 1)
        cmd = [python, "-u", str(script), *trainer_args]
        say(f"RANK_TABLE_FILE={table.path}: {len(procs)} rank(s) of {table.rank_size} on server "
            f"{procs[0].env['SERVER_ID']}; logs {args.log_dir}/rank_<id>/log_train")
        sched = None
        base = {k: os.environ.get(k, v) for k, v in ASCEND_ENV.items()}
        base["HCCL_CONNECT_TIMEOUT"] = os.environ.get("HCCL_CONNECT_TIMEOUT", str(time_out))
        if cpu:
            sched = cpu_rehearsal_env(procs, table, free_port(), time_out)
            say("note: --device_target CPU: a rehearsal of the rank-table launch, MindSpore's CPU collectives "
                "standing in for HCCL")
        base["MIND_DIFFUSION_LAUNCHER"] = "ranktable"
        for rp in procs:
            say(" ".join(f"{k}={v}" for k, v in rp.env.items()) + f" -> {rp.log}")
        say("$ " + " ".join(cmd))
        if args.dry_run:
            return 0
        return run_ranks(procs, cmd, child_env(root, python, base), sched, Path(args.log_dir), say=say)
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
