"""zapfarm's data plane: Celery tasks that run trials in libvirt guests."""
