"""The Celery application of the data plane.

Workers read only the broker and result backend URLs from the settings: they
hold no database credentials. Run one with ``farm worker`` (or
``celery -A workers.celery_app worker``).
"""

from __future__ import annotations

from farm.settings import load_settings
from farm.transport import make_app
from workers import kernel_watch

app = make_app(load_settings(), include=["workers.tasks"])
kernel_watch.install(app)
