"""The todo demo's settings as deployed behind nginx (tests/browser/deploy.test.mjs): what a
production settings file adds to a development one, with the deployment's paths and origin from
the environment.

| variable | what |
|---|---|
| ``DEPLOY_HOST`` | the host the site is served as (``ALLOWED_HOSTS``) |
| ``DEPLOY_STATIC_ROOT`` | where ``collectstatic`` writes and nginx reads |
| ``SNORKY_ALLOWED_ORIGINS`` and the demo's other variables | as in ``todo_site.settings`` |
"""

import os

from todo_site.settings import *  # noqa: F403 (the demo's settings, changed below)
from todo_site.settings import SNORKY

DEBUG = False
ALLOWED_HOSTS = [os.environ["DEPLOY_HOST"]]
# nginx terminates TLS and says so in X-Forwarded-Proto: Django builds https:// URLs, and
# Snorky's client config a wss:// one on the same origin.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
STATIC_ROOT = os.environ["DEPLOY_STATIC_ROOT"]
# The path nginx proxies to manage.py snorky, completed from each request: wss://<host>/ws.
SNORKY = {**SNORKY, "PUBLIC_URL": "/ws"}
