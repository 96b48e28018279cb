"""The tqdm bar of long calls: structures answered so far, or a job's progress from its status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tqdm.auto import tqdm

from .options import ClientSettings


def progress_bar(settings: ClientSettings, total: int, progress: bool | None) -> tqdm:
    """A bar of ``total`` structures; ``progress`` (else the settings') True shows it, None only on a terminal."""
    show = settings.progress if progress is None else progress
    return tqdm(total=total, unit="structure", desc="mlipserve", disable=None if show is None else not show)


def follow_job(bar: tqdm, status: Mapping[str, Any]) -> None:
    """Move the bar to the job's ``done`` of ``total``."""
    if status["total"] is not None and bar.total != status["total"]:
        bar.total = status["total"]
        bar.refresh()
    if status["done"] > bar.n:
        bar.update(status["done"] - bar.n)
