"""The kernel registry in the database: which images the farm knows by name.

The images themselves (fetching, inspecting, hashing) are farm.artifacts.kernels';
this module is the store's side, so that the data plane never imports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from farm.artifacts.kernels import KernelImage
from farm.store.db import ensure_kernel, make_engine, session_factory, upgrade
from farm.store.models import Kernel


@dataclass(frozen=True)
class KernelRow:
    name: str
    release: str
    source: str
    sha256: str | None
    path: str | None
    present: bool
    provenance: dict[str, object] | None = None


def register(database_url: str, image: KernelImage) -> None:
    """Record the image in the database (schema upgraded first); idempotent.

    Raises farm.store.db.KernelConflict when the name already stands for another image.
    """
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with session_factory(engine).begin() as session:
            ensure_kernel(
                session,
                image.name,
                image.release,
                str(image.path),
                image.sha256,
                image.source,
                provenance=image.provenance,
            )
    finally:
        engine.dispose()


def list_kernels(database_url: str) -> list[KernelRow]:
    """Every registered kernel, and whether its image is still on this host's disk."""
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with session_factory(engine)() as session:
            rows: Iterable[Kernel] = session.scalars(select(Kernel).order_by(Kernel.name))
            return [
                KernelRow(
                    name=k.name,
                    release=k.release,
                    source=k.source,
                    sha256=k.sha256,
                    path=k.image_path,
                    present=bool(k.image_path) and Path(str(k.image_path)).is_file(),
                    provenance=k.provenance,
                )
                for k in rows
            ]
    finally:
        engine.dispose()
