"""Write the host's pip settings as the build context ``pip-host`` of the image's install step.

    python3 docker/pip_host_context.py OUT_DIR [--python PYTHON] [--no-local-indexes]
                                       [--torch-version 2.13.0]

pip inside the image build should reach the packages the way pip on this machine does: the same
index or mirror, find-links folders, constraint files and CA bundle. This script reads the
settings that ``PYTHON -m pip`` sees (its configuration files and ``PIP_*`` variables, through
``pip config list``), keeps those that say where packages come from and how to reach them
(``ALLOWED``; an install ``--target``, a ``--user`` or a log file would change the install),
copies the local files and folders they name into OUT_DIR, and writes ``OUT_DIR/pip.conf`` with
those paths rewritten to ``/run/pip-host/...``, where the Dockerfile's build stage mounts OUT_DIR
(read-only, for the install step only: nothing of it is in any layer).

Folders are hard-linked (``cp -al``: no copy, instant) when OUT_DIR is on the same file system,
else copied. With ``--no-local-indexes`` file:// indexes are left out (docker sends a build
context to its daemon: a local mirror of several GB is too much; the build then takes those
packages from the other indexes). Standard library only: it runs with the host's python3.

Prints one JSON line: the settings written and whether a CPU wheel of torch lies in the staged
folders (then the build takes torch from there instead of the PyTorch index).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

MOUNT = "/run/pip-host"  # where the Dockerfile mounts OUT_DIR (RUN --mount=...,target=)
# options that say where packages come from and how to reach them; all others are left out
ALLOWED = {
    "index-url",
    "extra-index-url",
    "no-index",
    "find-links",
    "trusted-host",
    "cert",
    "client-cert",
    "constraint",
    "timeout",
    "default-timeout",
    "retries",
    "proxy",
    "prefer-binary",
    "only-binary",
    "no-binary",
    "pre",
}
LIST_KEYS = {"index-url", "extra-index-url", "find-links", "trusted-host", "constraint"}
SECTIONS = ("global", "install")  # the sections pip install reads


def host_settings(python: str) -> dict[str, dict[str, str]]:
    """``{section: {key: value}}`` as pip resolves them: ``PIP_*`` variables (``pip config
    list`` shows them as section ``:env:``) override the same key of every file section."""
    listing = subprocess.run(
        [python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    sections: dict[str, dict[str, str]] = {}
    for line in listing.splitlines():
        match = re.fullmatch(r"([^.=]*)\.([^=]+)=(.*)", line.strip())
        if not match:
            continue
        section, key, raw = match.groups()
        value = ast.literal_eval(raw) if raw[:1] in "'\"" else raw
        key = key.replace("_", "-")
        sections.setdefault(section, {})[key] = str(value)
    env = sections.pop(":env:", {})
    out = {s: dict(sections.get(s, {})) for s in SECTIONS}
    for key, value in env.items():
        for section in SECTIONS:
            if section == "global" or key in out[section]:
                out[section][key] = value
    # pip (through requests) also honours these variables when no cert / proxy is configured
    ca = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if ca and "cert" not in out["global"] and Path(ca).is_file():
        out["global"]["cert"] = ca
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy and "proxy" not in out["global"]:
        out["global"]["proxy"] = proxy
    return {s: {k: v for k, v in kv.items() if k in ALLOWED} for s, kv in out.items()}


class Stager:
    """Copies (hard-links) local paths into OUT_DIR once each and returns their mounted path."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.staged: dict[Path, str] = {}
        self.folders: list[Path] = []

    def __call__(self, path: Path) -> str:
        path = path.resolve()
        if path not in self.staged:
            name = f"{len(self.staged)}-{path.name or 'root'}"
            target = self.out / "files" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                linked = subprocess.run(
                    ["cp", "-al", str(path), str(target)], capture_output=True, text=True
                )
                if linked.returncode != 0:  # another file system (or not allowed): copy
                    shutil.rmtree(target, ignore_errors=True)
                    shutil.copytree(path, target, symlinks=False)
                self.folders.append(target)
            else:
                shutil.copy2(path, target)
            self.staged[path] = f"{MOUNT}/files/{name}"
        return self.staged[path]


def rewrite(key: str, value: str, stage: Stager, local_indexes: bool) -> str | None:
    """The value with its local paths staged and rewritten; None drops the setting."""
    items = value.split() if key in LIST_KEYS else [value]
    out = []
    for item in items:
        url = urlparse(item)
        if key in ("index-url", "extra-index-url") and url.scheme == "file":
            if not local_indexes:
                print(f"pip-host: leaving out the local index {item}", file=sys.stderr)
                continue
            path = Path(unquote(url.path))
            # a "simple" index links its files relatively (../../files/x.whl): stage its parent
            root = path.parent if path.name == "simple" else path
            out.append("file://" + stage(root) + ("/simple" if root != path else ""))
        elif key in ("find-links", "cert", "client-cert", "constraint") and url.scheme in (
            "",
            "file",
        ):
            path = Path(unquote(url.path))
            if not path.exists():
                print(f"pip-host: {key} {item} does not exist, left out", file=sys.stderr)
                continue
            out.append(stage(path))
        else:
            out.append(item)
    return " ".join(out) if out else None


def torch_wheel(folders: list[Path], version: str) -> str | None:
    """A CPU wheel of torch ``version`` in the staged folders (find-links or file indexes)."""
    for folder in folders:
        for wheel in folder.rglob(f"torch-{version}+cpu-*.whl"):
            return wheel.name
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--python", default=sys.executable, help="whose pip settings to use")
    parser.add_argument("--no-local-indexes", action="store_true")
    parser.add_argument("--torch-version", default="2.13.0")
    args = parser.parse_args(argv)

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    stage = Stager(args.out)
    lines = [
        "# The host's pip settings for the image's install step (docker/pip_host_context.py);",
        f"# local paths point into {MOUNT}, where the build stage mounts this folder.",
    ]
    written: dict[str, dict[str, str]] = {}
    for section, settings in host_settings(args.python).items():
        kept = {}
        for key, value in settings.items():
            new = rewrite(key, value, stage, local_indexes=not args.no_local_indexes)
            if new is not None:
                kept[key] = new
        if kept:
            lines.append(f"[{section}]")
            lines += [f"{key} = {value}" for key, value in sorted(kept.items())]
            written[section] = kept
    (args.out / "pip.conf").write_text("\n".join(lines) + "\n")
    wheel = torch_wheel(stage.folders, args.torch_version)
    print(json.dumps({"pip_conf": written, "torch_wheel": wheel}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
