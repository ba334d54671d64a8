"""WSGI entry point of the todo demo (``runserver`` uses it)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "todo_site.settings")
application = get_wsgi_application()
