#!/bin/sh
# Install ievnet-bids with its pinned dependencies into one Python environment.
#
#   docker/install.sh SRC_DIR
#
# SRC_DIR holds pyproject.toml, requirements.lock, README.md, LICENSE, ievnet_bids/ and
# data/templates/ (TemplateFlow folders, tpl-<name>/). The Dockerfile runs this script in its build stage; tests/test_container.py
# runs the same script in a fresh virtual environment.
#
# Environment:
#   PYTHON           interpreter of the target environment (default: python3)
#   TORCH_VERSION    torch release (default: 2.13.0, as pinned in pyproject.toml)
#   TORCH_INDEX_URL  index torch is taken from (default: the PyTorch CPU index; e.g.
#                    https://download.pytorch.org/whl/cu128 for a CUDA build); set it empty
#                    to take torch from pip's configured indexes and find-links instead
set -eu

src="${1:?usage: install.sh SRC_DIR}"
python="${PYTHON:-python3}"
torch_version="${TORCH_VERSION:-2.13.0}"
torch_index="${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}"

# 1. torch alone, from its own index: an unqualified "torch" from PyPI is a multi-GB CUDA
#    build. Its dependencies are resolved in step 2 (from PyPI, pinned by requirements.lock;
#    a CUDA build's nvidia-* libraries come from PyPI too).
if [ -n "$torch_index" ]; then
    "$python" -m pip install --no-deps --index-url "$torch_index" "torch==${torch_version}"
else
    "$python" -m pip install --no-deps "torch==${torch_version}"
fi

# 2. the package itself: a wheel built from SRC_DIR (not editable: the model and the templates
#    are copied into site-packages) and every dependency, pinned by requirements.lock.
"$python" -m pip install -c "${src}/requirements.lock" "${src}"
"$python" -m pip check

# 3. the shipped files resolve inside the installed package, nothing is downloaded at run time
cd /
"$python" - <<'PY'
import sysconfig
from pathlib import Path

import nilearn

from ievnet_bids.resources import default_model_path, templates_dir
from ievnet_bids.templates import shipped_template

site = Path(sysconfig.get_paths()["purelib"]).resolve()
head = Path(shipped_template().head_image)  # the TemplateFlow query, offline
for path in (default_model_path(), templates_dir(), head):
    assert site in path.resolve().parents, f"{path} is not inside {site}"
assert default_model_path().is_file(), default_model_path()
mni = Path(nilearn.__file__).parent / "datasets" / "data"
assert (mni / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").is_file(), mni
print("ievnet-bids installed: model", default_model_path(), "templates", templates_dir())
PY
