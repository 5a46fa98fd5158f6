"""Offline TemplateFlow queries: the shipped templates merged with the user's cache.

Two roots hold TemplateFlow folders (``tpl-<name>/``): the templates shipped with the package
(:func:`~ievnet_bids.resources.templates_dir`) and the user's TemplateFlow cache
(``$TEMPLATEFLOW_HOME``; unset: TemplateFlow's own default, ``~/.cache/templateflow`` on
Linux). :func:`templateflow_client` merges them in a throw-away folder of symbolic links,
``tpl-<name>`` → the shipped folder when ievnet-bids ships ``<name>`` (a shipped template
always wins), else the cache's, holding only the templates asked for (indexing a whole cache
would take seconds), and queries it with TemplateFlow's own client
(:class:`templateflow.client.TemplateFlowClient`; ``templateflow.api.get`` is this client's
``get`` bound to ``$TEMPLATEFLOW_HOME`` at import). :func:`local_files` returns real paths,
so the links can go.

Nothing is downloaded, ever:

* TemplateFlow's ``get`` fetches any listed file that is missing or empty (a cache's 0-byte
  stubs, an un-fetched DataLad link) from S3. :func:`local_files` calls it only when every
  match is on disk, else it skips the stubs (or refuses, :class:`TemplateNotDownloadedError`,
  when nothing matching was fetched), and the client's S3 root is a URL no HTTP library can
  open (:data:`OFFLINE_S3_ROOT`), so even a file that slipped through fails without a
  connection; DataLad and auto-update are off.
* Importing ``templateflow`` binds ``templateflow.api`` to ``$TEMPLATEFLOW_HOME`` and, when
  that folder is missing or empty, unpacks TemplateFlow's skeleton (thousands of stub files)
  into it. :func:`_import_templateflow` points that first import at the shipped folder
  instead in that case, so no cache folder is created or written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ievnet_bids.resources import templates_dir

if TYPE_CHECKING:
    from templateflow.client import TemplateFlowClient

HOME_ENV = "TEMPLATEFLOW_HOME"
OFFLINE_S3_ROOT = "offline://ievnet-bids-never-downloads"
"""S3 root of the client: no connection adapter exists for it, so no request leaves."""


class TemplateError(Exception):
    """A template cannot be used (the message names the template and the reason)."""


class TemplateNotFoundError(TemplateError):
    """No ``tpl-<name>/`` shipped or in the user's TemplateFlow cache."""


class TemplateNotDownloadedError(TemplateNotFoundError):
    """The cache lists the template's files but holds only stubs (never downloaded)."""


def templateflow_home() -> Path:
    """The user's TemplateFlow cache: ``$TEMPLATEFLOW_HOME`` or TemplateFlow's default."""
    value = os.environ.get(HOME_ENV)
    if value:
        return Path(value).expanduser().absolute()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("templateflow")).absolute()


def describe_home() -> str:
    """``TEMPLATEFLOW_HOME=<path>`` for messages (says when it is TemplateFlow's default)."""
    default = "" if os.environ.get(HOME_ENV) else " (unset: TemplateFlow's default)"
    return f"{HOME_ENV}={templateflow_home()}{default}"


def _template_folders(root: Path) -> dict[str, Path]:
    """``{name: root/tpl-<name>}`` of the template folders directly below ``root``."""
    if not root.is_dir():
        return {}
    try:
        return {p.name[4:]: p for p in sorted(root.glob("tpl-*")) if p.is_dir()}
    except OSError:  # unreadable cache: as if empty
        return {}


def shipped_templates() -> dict[str, Path]:
    """``{name: folder}`` of the templates shipped with ievnet-bids."""
    return _template_folders(templates_dir())


def available_templates() -> list[str]:
    """Names of every template: shipped ones and those in the user's cache."""
    return sorted({*shipped_templates(), *_template_folders(templateflow_home())})


def template_folder(name: str) -> Path:
    """The folder of template ``name``: shipped, else the user's cache's.

    Raises :class:`TemplateNotFoundError` (one line naming the cache and the template).
    """
    folders = {**_template_folders(templateflow_home()), **shipped_templates()}
    if name in folders:
        return folders[name]
    others = ", ".join(sorted(folders)) or "none"
    raise TemplateNotFoundError(
        f"template {name!r} not found: no tpl-{name}/ in {describe_home()} and not shipped "
        f"(templates available: {others})"
    )


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _populated(folder: Path) -> bool:
    """Whether ``folder`` exists and holds anything (what TemplateFlow calls cached)."""
    try:
        return folder.is_dir() and any(folder.iterdir())
    except OSError:
        return False


def _import_templateflow() -> type[TemplateFlowClient]:
    """``TemplateFlowClient``, imported so that the import itself writes nothing (module doc)."""
    import sys

    if "templateflow" in sys.modules:
        from templateflow.client import TemplateFlowClient

        return TemplateFlowClient
    env = {"TEMPLATEFLOW_AUTOUPDATE": "0", "TEMPLATEFLOW_USE_DATALAD": "0"}
    if not _populated(templateflow_home()):
        env[HOME_ENV] = str(templates_dir())
    with _environment(**env):
        from templateflow.client import TemplateFlowClient
    return TemplateFlowClient


@contextlib.contextmanager
def templateflow_client(names: Iterable[str]) -> Iterator[TemplateFlowClient]:
    """A TemplateFlow client over a merged view holding the templates ``names`` (module doc).

    Raises :class:`TemplateNotFoundError` for a name that is neither shipped nor cached.
    """
    folders = {name: template_folder(name) for name in dict.fromkeys(names)}
    client_class = _import_templateflow()
    with tempfile.TemporaryDirectory(prefix="ievnet_templateflow_") as view:
        for name, folder in folders.items():
            (Path(view) / f"tpl-{name}").symlink_to(folder.resolve(), target_is_directory=True)
        yield client_class(
            root=view,
            autoupdate=False,
            use_datalad=False,
            s3_root=OFFLINE_S3_ROOT,
            timeout=1,
        )


def _problem(path: Path) -> str | None:
    """Why ``path`` is not a usable downloaded file (None when it is)."""
    if not path.is_file():
        return "missing (an un-fetched DataLad link?)"
    size = path.stat().st_size
    if size == 0:
        return "an empty stub (never downloaded)"
    if size < 1024 and path.read_bytes().startswith(b"<?xml"):
        return "an S3 error page, not a template file"
    return None


def local_files(client: TemplateFlowClient, template: str, **query: Any) -> list[Path]:
    """Real paths of the downloaded files of ``template`` that match ``query`` (TemplateFlow
    entities, e.g. ``suffix="T1w", desc=None``), sorted; ``[]`` when none match.

    Nothing is fetched. When every match is on disk they come from TemplateFlow's ``get``;
    when some are stubs (a partly downloaded cache: e.g. ``res-01`` fetched, ``res-02`` not)
    the downloaded ones are returned from the listing (``get`` would try to fetch the rest);
    when all are stubs, :class:`TemplateNotDownloadedError`.
    """
    listed = client.ls(template, **query)
    if not listed:
        return []
    stubs = [(p, why) for p in listed if (why := _problem(p)) is not None]
    if len(stubs) == len(listed):
        path, why = stubs[0]
        raise TemplateNotDownloadedError(
            f"template {template!r} in {describe_home()}: {path.name} is {why}; ievnet-bids "
            "never downloads: fetch it on a machine with network access, e.g. python -c "
            f"\"from templateflow import api; api.get('{template}')\""
        )
    if stubs:
        stubbed = {p for p, _ in stubs}
        return sorted(p.resolve() for p in listed if p not in stubbed)
    try:
        found = client.get(template, **query)
    except Exception as err:  # a download attempt that the offline S3 root stopped
        raise TemplateNotDownloadedError(
            f"template {template!r} in {describe_home()}: {err}"
        ) from err
    paths = found if isinstance(found, list) else [found]
    return sorted(Path(p).resolve() for p in paths)
