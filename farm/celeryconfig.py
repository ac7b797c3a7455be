"""Celery settings for zapfarm, in one place (as Celery's docs recommend).

A trial is long (seconds to minutes) and must never be lost or run twice
into the database: acknowledge late, re-queue when a worker dies, take one
message at a time, and keep Redis' visibility timeout above the longest
trial so a slow trial is not redelivered while it still runs.
"""

from __future__ import annotations

TRIAL_SOFT_LIMIT_S = 420  # boot (90 s) + deadline (120 s) + margins; raises in the task
TRIAL_HARD_LIMIT_S = 480  # kills the process; AUTODESTROY takes the guest with it

task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_soft_time_limit = TRIAL_SOFT_LIMIT_S
task_time_limit = TRIAL_HARD_LIMIT_S
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_expires = 7 * 24 * 3600
result_extended = False
task_track_started = True
broker_connection_retry_on_startup = True
# unacked_restore_throttle 1: workers look for messages past their visibility timeout every
# 10 s (kombu's default, 10, makes that every 100 s), e.g. a message a worker had reserved
# when Redis went away and could not give back. The timeout itself: FARM_VISIBILITY_TIMEOUT_S.
broker_transport_options = {
    "visibility_timeout": 2 * TRIAL_HARD_LIMIT_S,
    "unacked_restore_throttle": 1,
}
result_backend_transport_options = {"retry_policy": {"timeout": 5.0}}
# A Redis restart must not turn a finished trial into a lost (or failed) one: storing its
# result (and reading results, on the scheduler) retries with backoff up to 10 s, for
# ~10 minutes, instead of failing the task with the connection error.
result_backend_always_retry = True
result_backend_max_retries = 120
worker_hijack_root_logger = False
# Task events on (`celery -A workers.celery_app flower` shows workers and tasks, and so does
# `celery events`): a few small messages per batch of trials, on a fanout exchange that
# nobody consumes when no monitor runs (Redis drops them). "task-sent" comes from the
# scheduler's side, so Flower also sees batches that wait in a queue.
worker_send_task_events = True
task_send_sent_event = True
# A broker blip must not kill trials running in guests: they finish and store their result
# (the result backend retries); their unacked message comes back after visibility_timeout
# and runs again, which the recorder counts as a duplicate. Explicit, as Celery 6 flips it.
worker_cancel_long_running_tasks_on_connection_loss = False
