"""The Celery application, built the same way by both planes.

The control plane builds a client (it sends tasks by name and never imports
the data plane); a worker builds it with ``include=["workers.tasks"]``. The
settings that matter for never losing a trial are in ``farm.celeryconfig``.
"""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery

from farm.settings import Settings


def make_app(settings: Settings, include: Sequence[str] = ()) -> Celery:
    """A Celery app on the farm's broker and result backend (workers hold no DB credentials)."""
    app = Celery(
        "zapfarm",
        broker=settings.broker_url,
        backend=settings.result_backend,
        include=list(include),
    )
    app.config_from_object("farm.celeryconfig")
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "visibility_timeout": settings.visibility_timeout_s,
    }
    return app


def worker_argv(
    python: str, queues: Sequence[str], *, concurrency: int, extra: Sequence[str] = ()
) -> list[str]:
    """The command line of a data-plane worker (``farm worker``, and the local workers of
    ``farm demo`` and the tests): one definition, so both run the same worker."""
    return [
        python,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "--concurrency",
        str(concurrency),
        "--queues",
        ",".join(queues),
        "--loglevel",
        "INFO",
        *extra,
    ]
