"""Participant runs in parallel on one output folder, as the tasks of a SLURM array do.

Three ``ievnet-bids ... participant`` processes (sub-01 ses-1, sub-01 ses-2, sub-02), each with
its own work folder, share one output folder and one pybids database built beforehand (as
``scripts/slurm_submit.sh`` does). None may corrupt ``dataset_description.json`` or the
others' files.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ievnet_bids.bids import derivatives as D
from ievnet_bids.resources import default_model_path

pytestmark = [
    pytest.mark.xdist_group("participant"),
    pytest.mark.skipif(not default_model_path().is_file(), reason="no shipped model"),
]
SIDES = ("left", "right")
# (name, selection): together every unit of the synth_bids fixture, one process each
JOBS = (
    ("sub01_ses1", ["--participant-label", "01", "--session-label", "1"]),
    ("sub01_ses2", ["--participant-label", "01", "--session-label", "2"]),
    ("sub02", ["--participant-label", "02"]),
)


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("ievnet-bids")
    if exe.is_file():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from ievnet_bids.cli.run import main; "
            "sys.exit(main())"]  # fmt: skip


def _build_database(bids: Path, database: Path) -> None:
    """The first step of a SLURM run: index the dataset once (paths as the CLI resolves them)."""
    from ievnet_bids.bids.query import build_layout

    build_layout(bids.resolve(), database_dir=database.resolve())


@pytest.fixture(scope="module")
def parallel_run(synth_bids: Path, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("concurrency")
    out, database = root / "derivatives" / "ievnet", root / "bids_db"
    _build_database(synth_bids, database)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NIPYPE_NO_ET": "1"}
    procs = []
    start = time.monotonic()
    for name, selection in JOBS:
        log = (root / f"{name}.log").open("w")
        cmd = [
            *_cli(),
            str(synth_bids),
            str(out),
            "participant",
            *selection,
            "-w", str(root / f"work_{name}"),
            "--bids-database-dir", str(database),
            "--nprocs", "1",
            "--omp-nthreads", "1",
        ]  # fmt: skip
        procs.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))
        log.close()
    codes = {}
    for name, proc in procs:
        try:
            codes[name] = proc.wait(timeout=1500)
        except subprocess.TimeoutExpired:
            proc.kill()
            codes[name] = "timeout"
    elapsed = time.monotonic() - start
    logs = {name: (root / f"{name}.log").read_text(errors="replace") for name, _ in JOBS}
    return {"bids": synth_bids, "out": out, "codes": codes, "logs": logs, "elapsed": elapsed}


def test_every_process_succeeds(parallel_run):
    failed = {n: c for n, c in parallel_run["codes"].items() if c != 0}
    assert not failed, "\n\n".join(
        f"{n} (exit {c}):\n{parallel_run['logs'][n][-3000:]}" for n, c in failed.items()
    )
    print(f"{len(JOBS)} concurrent participant runs: {parallel_run['elapsed']:.0f} s")


def test_dataset_description_is_valid(parallel_run):
    from ievnet_bids import __version__

    path = parallel_run["out"] / "dataset_description.json"
    desc = json.loads(path.read_text())
    assert desc == D.dataset_description(version=__version__, bids_dir=parallel_run["bids"])
    assert desc["DatasetType"] == "derivative"
    assert path.read_text() == json.dumps(desc, indent=2) + "\n"  # one writer's whole text
    ignore = (parallel_run["out"] / ".bidsignore").read_text().splitlines()
    assert sorted(ignore) == sorted(set(ignore)) and set(D.BIDSIGNORE) <= set(ignore)
    dseg = (parallel_run["out"] / "desc-tfs_dseg.tsv").read_text().splitlines()
    assert len(dseg) == 1 + len(D.DSEG_LABELS)


def test_every_mask_is_present_and_loadable(parallel_run):
    slabs = sorted(parallel_run["bids"].glob("sub-*/ses-*/anat/*_acq-space_T2w.nii.gz"))
    assert len(slabs) == len(JOBS)
    for slab in slabs:
        grid = nib.load(slab)
        for side in SIDES:
            path = D.derivative_path(
                slab,
                parallel_run["out"],
                label="TFS",
                desc=side,
                suffix="mask",
                extension=".nii.gz",
            )
            assert path.is_file(), path
            img = nib.load(path)
            data = np.asanyarray(img.dataobj)
            assert img.shape == grid.shape[:3], path
            np.testing.assert_allclose(img.affine, grid.affine, atol=1e-4)
            assert set(np.unique(data)) <= {0, 1} and data.any(), path
            sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
            assert sidecar["Side"] == side
        volumes = D.derivative_path(
            slab, parallel_run["out"], space=None, desc="tfs", suffix="volumes", extension=".tsv"
        )
        assert len(volumes.read_text().splitlines()) == 1 + len(SIDES), volumes


def test_no_leftovers_and_one_config_per_run(parallel_run):
    out = parallel_run["out"]
    temporaries = [p for p in out.rglob(".*") if p.name != ".bidsignore"]
    assert not temporaries, temporaries
    crashes = list(out.glob("sub-*/log/**/crash-*"))
    assert not crashes, crashes
    configs = list((out / "logs").glob("config-*.toml"))
    assert len(configs) == len(JOBS)


def test_participant_reports_are_whole(parallel_run):
    from importlib.util import find_spec

    if find_spec("ievnet_bids.reports.participant") is None:
        pytest.skip("no participant reports yet")
    for sub in ("01", "02"):
        text = (parallel_run["out"] / f"sub-{sub}.html").read_text()
        assert text.rstrip().endswith("</html>"), f"sub-{sub}.html is cut short"
    statuses = sorted((parallel_run["out"] / "logs").glob("*_status.json"))
    assert len(statuses) == len(JOBS), statuses
    assert all(json.loads(p.read_text())["status"] == "ok" for p in statuses)


# --------------------------------------------------------------------------- SLURM scripts
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_submit_chains_index_array_and_group(synth_bids, tmp_path):
    """slurm_submit.sh with a stand-in sbatch that records its arguments."""
    calls = tmp_path / "sbatch_calls.txt"
    stub = tmp_path / "sbatch"
    stub.write_text(
        f'#!/bin/bash\nprintf "%s\\n" "$*" >> {calls}\n'
        f'echo "$((100 + $(wc -l < {calls})));cluster"\n'
    )
    stub.chmod(0o755)
    out = tmp_path / "out"
    env = os.environ | {
        "IEVNET_SBATCH": str(stub),
        "IEVNET_RUNTIME": "venv",
        "IEVNET_MAX_PARALLEL": "1",
        "IEVNET_SBATCH_ARGS": "--partition=short",
        "IEVNET_RUN_DIR": str(tmp_path / "run"),
    }
    result = subprocess.run(
        ["bash", str(SCRIPTS / "slurm_submit.sh"), str(synth_bids), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["101", "102", "103"]
    assert (tmp_path / "run" / "participants.txt").read_text() == "01\n02\n"
    index, array, group = calls.read_text().splitlines()
    for line in (index, array, group):
        assert "--parsable" in line and "--partition=short" in line, line
    assert "--job-name=ievnet-index" in index and index.endswith("slurm_participant.sbatch index")
    assert "--array=1-2%1" in array and "--dependency=afterok:101" in array
    assert "--cpus-per-task=4" in array and array.endswith("slurm_participant.sbatch participant")
    assert "--dependency=afterok:102" in group and group.endswith("slurm_participant.sbatch group")


def _dry_task(env: dict) -> list[str]:
    result = subprocess.run(
        ["bash", str(SCRIPTS / "slurm_participant.sbatch"), "participant"],
        env=os.environ | env | {"IEVNET_DRY_RUN": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return shlex.split(result.stdout.strip().splitlines()[-1])


def test_array_task_command_parses(synth_bids, tmp_path):
    from ievnet_bids.cli.parser import parse_args

    env = {
        "IEVNET_BIDS_DIR": str(synth_bids),
        "IEVNET_OUTPUT_DIR": str(tmp_path / "out"),
        "IEVNET_RUNTIME": "venv",
        "IEVNET_VENV": str(Path(sys.executable).parent.parent),
        "IEVNET_DB_DIR": str(tmp_path / "db"),
        "IEVNET_ARGS": "--localizer template",
        "SLURM_ARRAY_JOB_ID": "7",
        "SLURM_ARRAY_TASK_ID": "2",
        "SLURM_CPUS_PER_TASK": "3",
        "SLURM_MEM_PER_NODE": "8192",
        "TMPDIR": str(tmp_path / "scratch"),
    }
    argv = _dry_task(env)
    assert Path(argv[0]) == Path(sys.executable).parent / "ievnet-bids"
    config = parse_args(argv[1:])
    assert config.participant_labels == ("02",)
    assert (config.nprocs, config.mem_gb, config.localizer) == (3, 8.0, "template")
    assert config.work_dir == (tmp_path / "scratch" / "ievnet_work_7_2").resolve()
    assert config.bids_database_dir == (tmp_path / "db").resolve()
    assert not (tmp_path / "scratch").exists(), "a dry run creates nothing"

    argv = _dry_task(env | {"IEVNET_RUNTIME": "apptainer", "IEVNET_GPU": "1"})
    image = argv.index("ievnet.sif")
    assert argv[:4] == ["apptainer", "run", "--cleanenv", "--nv"]
    assert f"{synth_bids}:/bids:ro" in argv[:image]
    config = parse_args(argv[image + 1 :])
    assert (str(config.bids_dir), str(config.output_dir), str(config.work_dir)) == (
        "/bids",
        "/out",
        "/work",
    )
    assert (str(config.bids_database_dir), config.device) == ("/bids_db", "cuda")


# --------------------------------------------------------------------------- real SLURM
SLURM_DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def slurm_cluster(tmp_path_factory):
    """A one-node SLURM cluster of our own (Debian slurm-wlm + munge, run as root, private
    ports, sockets and state under a temporary folder); yields the environment to use it."""
    import shutil
    import socket

    missing = [d for d in SLURM_DAEMONS if shutil.which(d) is None and
               not Path("/usr/sbin", d).is_file()]  # fmt: skip
    if missing:
        pytest.skip(f"SLURM not installed ({', '.join(missing)}): apt-get install slurmctld "
                    "slurmd slurm-client munge")  # fmt: skip
    if os.geteuid() != 0:
        pytest.skip("the test cluster's daemons run as root")
    root = tmp_path_factory.mktemp("slurm")
    host = socket.gethostname().split(".")[0]
    mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
    conf = root / "slurm.conf"
    conf.write_text(
        f"""ClusterName=ievnettest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
NodeName={host} CPUs={os.cpu_count()} RealMemory={mem_mb} State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    )
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    env = os.environ | {"SLURM_CONF": str(conf)}
    sbin = lambda name: shutil.which(name) or f"/usr/sbin/{name}"  # noqa: E731
    daemons = [
        subprocess.Popen(
            [sbin("munged"), "-F", "--force", f"--key-file={key}",
             f"--socket={root}/munge.socket", f"--pid-file={root}/munged.pid",
             f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed"],
        ),
    ]  # fmt: skip
    try:
        time.sleep(1)
        daemons.append(subprocess.Popen([sbin("slurmctld"), "-D", "-i", "-f", str(conf)], env=env))
        time.sleep(2)
        daemons.append(subprocess.Popen([sbin("slurmd"), "-D", "-f", str(conf)], env=env))
        deadline = time.monotonic() + 60
        while True:
            info = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True
            )
            if info.stdout.strip() in ("idle", "mixed"):
                break
            if time.monotonic() > deadline or any(d.poll() is not None for d in daemons):
                logs = [(root / f).read_text() for f in ("slurmctld.log", "slurmd.log")
                        if (root / f).is_file()]  # fmt: skip
                pytest.fail(f"the test cluster did not start: {info}\n" + "\n".join(logs))
            time.sleep(1)
        yield env
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()


def _job_states(env: dict, job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """``{job id (array tasks as id_task): (state, exit code)}`` from ``scontrol``."""
    states = {}
    for job in job_ids:
        out = subprocess.run(
            ["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            f = dict(item.split("=", 1) for item in line.split() if "=" in item)
            name = f["JobId"] if "ArrayTaskId" not in f else f"{f['ArrayJobId']}_{f['ArrayTaskId']}"
            states[name] = (f["JobState"], f["ExitCode"])
    return states


@pytest.mark.slow
def test_slurm_array_on_a_real_cluster(slurm_cluster, synth_bids, tmp_path):
    """scripts/slurm_submit.sh on a one-node SLURM: index → 2-task array → group."""

    env = slurm_cluster | {
        "IEVNET_RUNTIME": "venv",
        "IEVNET_VENV": str(Path(sys.executable).parent.parent),
        "IEVNET_CPUS": "1",
        "IEVNET_MEM": "4G",  # nipype refuses a --mem-gb below its largest node (3 GB)
        "IEVNET_TIME": "00:30:00",
        "IEVNET_SCRATCH": str(tmp_path / "scratch"),
    }
    out = tmp_path / "derivatives" / "ievnet"
    submit = subprocess.run(
        ["bash", str(Path(__file__).resolve().parents[1] / "scripts" / "slurm_submit.sh"),
         str(synth_bids), str(out)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stdout + submit.stderr
    index_id, array_id, group_id = submit.stdout.split()
    deadline = time.monotonic() + 1800
    while subprocess.run(
        ["squeue", "-h", "-j", f"{index_id},{array_id},{group_id}"],
        env=env, capture_output=True, text=True,
    ).stdout.strip():  # fmt: skip
        assert time.monotonic() < deadline, "SLURM jobs still queued after 30 min"
        time.sleep(5)
    states = _job_states(env, [index_id, array_id, group_id])
    logs = "\n".join(
        f"== {p.name}\n{p.read_text()[-2000:]}" for p in sorted(out.glob("logs/slurm/*/*.out"))
    )
    assert states[index_id] == ("COMPLETED", "0:0"), (states, logs)
    assert states[f"{array_id}_1"] == ("COMPLETED", "0:0"), (states, logs)
    assert states[f"{array_id}_2"] == ("COMPLETED", "0:0"), (states, logs)
    assert states[group_id] == ("COMPLETED", "0:0"), (states, logs)
    assert (out / "group_tfs.tsv").is_file()
    for slab in sorted(synth_bids.glob("sub-*/ses-*/anat/*_acq-space_T2w.nii.gz")):
        for side in SIDES:
            mask = D.derivative_path(
                slab, out, label="TFS", desc=side, suffix="mask", extension=".nii.gz"
            )
            assert np.asanyarray(nib.load(mask).dataobj).any(), mask
    json.loads((out / "dataset_description.json").read_text())
    assert not list((tmp_path / "scratch").glob("ievnet_work_*_[12]")), "work folders kept"
