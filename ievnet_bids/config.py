"""Run configuration: parsed once from argv (:mod:`ievnet_bids.cli.parser`), then read-only.

``RunConfig`` is a frozen dataclass passed down explicitly (no global config). It serialises
to TOML (the copy kept with the logs) and JSON, and reads back from both.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
import time
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ievnet_bids import __version__
from ievnet_bids.atomic import write_text_atomic
from ievnet_bids.resources import SHIPPED_TEMPLATE

AnalysisLevel = Literal["participant", "group"]
Device = Literal["auto", "cpu", "cuda"]
Localizer = Literal["auto", "template", "detect", "landmarks"]

ANALYSIS_LEVELS: tuple[str, ...] = ("participant", "group")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
PRECISION_HELP = (
    "network arithmetic: auto = bf16 autocast where the hardware computes bf16 natively (GPUs "
    "with bf16; CPUs with AMX or AVX512-BF16, where it is 2.1-2.4x faster with the same masks "
    "in our tests), else fp32; fp32 gives the same masks on every machine"
)


def autocast_setting(precision: str) -> bool | None:
    """``Segmenter(amp=…)`` of a ``--precision``: auto → None (bf16 where native)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return {"auto": None, "fp32": False, "bf16": True}[precision]


LOCALIZERS: tuple[str, ...] = ("auto", "template", "detect", "landmarks")
ROLES: tuple[str, ...] = ("slab", "head", "flair")
"""Image roles of ``--bids-filter-file``: the inner-ear slab (target), the full head, and the
delayed-gadolinium FLAIR (hydrops)."""
DEFAULT_ACQ: tuple[str, ...] = ("space", "ciss", "spc", "drive", "fiesta", "3dspace", "t2space")
"""``acq-`` labels (case-insensitive) that mark a T2w image as a heavily T2-weighted slab."""
TEMPLATE_NAME_RE = re.compile(r"^[a-zA-Z0-9]+$")
"""A TemplateFlow template name (the ``<name>`` of ``tpl-<name>``)."""
TOML_NONE = "__none__"
"""How a ``null`` filter value (pybids ``Query.NONE``) is spelled in TOML, which has no null."""


def default_work_dir() -> Path:
    """``<tempdir>/ievnet_work``."""
    return Path(tempfile.gettempdir()) / "ievnet_work"


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class RunConfig:
    """Everything one ``ievnet-bids`` invocation needs; paths are absolute.

    Empty ``participant_labels``/``session_labels`` select all. ``bids_filters`` maps a role
    (``"slab"``, ``"head"``, ``"flair"``) to pybids filters in JSON form (``None`` = entity
    must be absent, ``"*"`` = any value); treat it as read-only. ``model=None`` means the
    shipped default. ``hydrops``: quantify the ELS where a session has a FLAIR.
    """

    bids_dir: Path
    output_dir: Path
    analysis_level: AnalysisLevel
    participant_labels: tuple[str, ...] = ()
    session_labels: tuple[str, ...] = ()
    bids_filters: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False)
    work_dir: Path = field(default_factory=default_work_dir)
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    model: Path | None = None
    device: Device = "auto"
    tta: bool = True  # flip test-time augmentation
    hydrops: bool = True  # ELS quantification where a session has a FLAIR
    precision: Precision = "auto"
    localizer: Localizer = "auto"
    landmarks_file: Path | None = None
    template: str = SHIPPED_TEMPLATE  # TemplateFlow name of the template localizer's head
    skip_bids_validation: bool = False
    bids_database_dir: Path | None = None
    stop_on_first_crash: bool = False
    verbose: int = 0
    acq_values: tuple[str, ...] = DEFAULT_ACQ
    reference_dir: Path | None = None
    version: str = __version__
    run_id: str = field(default_factory=_new_run_id, compare=False)

    def __post_init__(self) -> None:
        if self.analysis_level not in ANALYSIS_LEVELS:
            raise ValueError(f"analysis_level must be one of {ANALYSIS_LEVELS}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}")
        if self.localizer not in LOCALIZERS:
            raise ValueError(f"localizer must be one of {LOCALIZERS}")
        unknown = set(self.bids_filters) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown bids_filters role(s) {sorted(unknown)}; expected {ROLES}")
        if self.localizer == "landmarks" and self.landmarks_file is None:
            raise ValueError("localizer 'landmarks' needs landmarks_file")
        if not TEMPLATE_NAME_RE.match(self.template):
            raise ValueError(f"template must be a TemplateFlow name, not {self.template!r}")

    # ------------------------------------------------------------------ derived values
    def model_path(self) -> Path:
        """``model`` or the shipped default weights."""
        from ievnet_bids.resources import default_model_path

        return self.model if self.model is not None else default_model_path()

    def filters_for(self, role: str) -> dict[str, Any]:
        """A copy of the pybids filters of ``role`` (``{}`` when none were given)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
        return dict(self.bids_filters.get(role, {}))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (paths as strings, tuples as lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = json.loads(json.dumps(value))
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict` (unknown keys are refused)."""
        kinds = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(kinds)
        if unknown:
            raise ValueError(f"unknown RunConfig field(s): {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if value is None:
                kwargs[name] = None
            elif name in _PATH_FIELDS:
                kwargs[name] = Path(value)
            elif name in _TUPLE_FIELDS:
                kwargs[name] = tuple(value)
            elif name == "bids_filters":
                kwargs[name] = {k: dict(v) for k, v in value.items()}
            else:
                kwargs[name] = value
        return cls(**kwargs)

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text; also written (atomically) to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            write_text_atomic(text, path)
        return text

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def to_toml(self, path: str | Path | None = None) -> str:
        """TOML text (``None`` fields omitted; null filter values as ``"__none__"``)."""
        data = self.to_dict()
        filters = data.pop("bids_filters")
        lines = ["# ievnet-bids run configuration", "[run]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in data.items() if v is not None]
        for role, flt in filters.items():
            lines += ["", f"[run.bids_filters.{role}]"]
            lines += [f"{_toml_key(k)} = {_toml_value(_none_to_toml(v))}" for k, v in flt.items()]
        text = "\n".join(lines) + "\n"
        if path is not None:
            write_text_atomic(text, path)
        return text

    @classmethod
    def from_toml(cls, text: str) -> RunConfig:
        """Inverse of :meth:`to_toml`."""
        data = dict(tomllib.loads(text)["run"])
        filters = data.pop("bids_filters", {})
        data["bids_filters"] = {
            role: {k: _none_from_toml(v) for k, v in flt.items()} for role, flt in filters.items()
        }
        return cls.from_dict(data)

    @classmethod
    def read(cls, path: str | Path) -> RunConfig:
        """Read a ``.toml`` or ``.json`` file written by :meth:`to_toml`/:meth:`to_json`."""
        path = Path(path)
        text = path.read_text()
        return cls.from_toml(text) if path.suffix == ".toml" else cls.from_json(text)


_PATH_FIELDS = frozenset(
    {
        "bids_dir",
        "output_dir",
        "work_dir",
        "model",
        "landmarks_file",
        "bids_database_dir",
        "reference_dir",
    }
)
_TUPLE_FIELDS = frozenset({"participant_labels", "session_labels", "acq_values"})


def _none_to_toml(value: Any) -> Any:
    if isinstance(value, list):
        return [_none_to_toml(v) for v in value]
    return TOML_NONE if value is None else value


def _none_from_toml(value: Any) -> Any:
    if isinstance(value, list):
        return [_none_from_toml(v) for v in value]
    return None if value == TOML_NONE else value


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value} to TOML")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
