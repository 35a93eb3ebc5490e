"""The Celery app. Configuration comes from Django settings (CELERY_ namespace).

The beat schedule lives here, in one place. Exactly one `beat` process may run (fly.toml gives
it its own single-machine process group); every entry carries `expires` so a tick that sat in
the queue past the next one is dropped instead of piling up, and every task is idempotent.
"""

from __future__ import annotations

import os

from celery import Celery
from django.conf import settings

from core.liveness import worker_liveness_install
from core.task_observability import task_observability_install

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "niyra.settings.production")

app = Celery("niyra")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()  # <app>/tasks.py of every installed app
app.conf.imports = ("core.tasks",)  # the project package is not an app

# name -> entry. Later features add their periodic tasks here and nowhere else.
app.conf.beat_schedule = {
    "worker-heartbeat": {
        "task": "core.tasks.heartbeat",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # Release credit holds whose call never settled (a crashed web process, a lost client).
    "credits-expire-holds": {
        "task": "credits.tasks.expire_holds",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # Notify low-balance crossings the database recorded (credits.services.alerts).
    "credits-balance-alerts": {
        "task": "credits.tasks.balance_alerts_dispatch",
        "schedule": 30.0,
        "options": {"expires": 25},
    },
    # Refresh OAuth tokens expiring before the next tick + margin (connections.tasks). A tick
    # that sat in the queue past most of an interval is dropped: the next one covers the same window.
    "oauth-refresh-tick": {
        "task": "connections.tasks.oauth_refresh_tick",
        "schedule": float(settings.OAUTH_REFRESH_INTERVAL_SECONDS),
        "options": {"expires": max(1, settings.OAUTH_REFRESH_INTERVAL_SECONDS * 9 // 10)},
    },
    # Probe the saved provider keys that are due (byok.tasks), bounded per provider per tick.
    "byok-key-health-tick": {
        "task": "byok.tasks.key_health_tick",
        "schedule": float(settings.BYOK_HEALTH_TICK_SECONDS),
        "options": {"expires": max(1, settings.BYOK_HEALTH_TICK_SECONDS * 9 // 10)},
    },
    # Check every account against its ledger (credits.tasks.ledger_reconcile: a gauge, and an
    # ERROR line per account that disagrees).
    "credits-ledger-reconcile": {
        "task": "credits.tasks.ledger_reconcile",
        "schedule": float(settings.LEDGER_RECONCILE_INTERVAL_SECONDS),
        "options": {"expires": max(1, settings.LEDGER_RECONCILE_INTERVAL_SECONDS * 9 // 10)},
    },
    # Re-queue notification emails left pending by a lost message or a broker outage.
    "notifications-email-sweep": {
        "task": "notifications.tasks.notification_email_sweep",
        "schedule": 120.0,
        "options": {"expires": 110},
    },
}

# A worker that stops consuming ends its process, to be restarted (core.liveness).
worker_liveness_install(app)
# A log line and metrics per task run, the queuing request's id carried along; the worker serves
# its metrics on METRICS_LISTEN (core.task_observability).
task_observability_install(app)
