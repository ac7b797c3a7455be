"""The Celery application of the data plane.

Workers read only the broker and result backend URLs from the settings: they
hold no database credentials. Run one with ``farm worker`` (or
``celery -A workers.celery_app worker``).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from farm.settings import load_settings

TRIAL_TASK = "zapfarm.run_trial"
BATCH_TASK = "zapfarm.run_batch"
PING_TASK = "zapfarm.ping"
QUEUE_PREFIX = "zapfarm.k."


def kernel_queue(kernel_name: str) -> str:
    """The queue of trials for one kernel; workers that have the kernel consume it."""
    return QUEUE_PREFIX + kernel_name


def trial_message(
    trial_id: str, token: str, kernel_name: str, kernel_path: str, deadline_s: float
) -> dict[str, Any]:
    """What the control plane sends for one trial: the token is the only parameter source."""
    return {
        "trial_id": trial_id,
        "token": token,
        "kernel": {"name": kernel_name, "path": kernel_path},
        "deadline_s": deadline_s,
    }


def make_app() -> Celery:
    settings = load_settings()
    # ``include`` is imported by worker processes only: the control plane sends
    # tasks by name and never loads libvirt.
    app = Celery(
        "zapfarm",
        broker=settings.broker_url,
        backend=settings.result_backend,
        include=["workers.tasks"],
    )
    app.config_from_object("workers.celeryconfig")
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "visibility_timeout": settings.visibility_timeout_s,
    }
    return app


app = make_app()
