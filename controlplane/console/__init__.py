"""The web console: static files (plain ES modules, no build step, no CDN) served by
``moray server`` on its HTTP port, at ``/`` (index.html) and ``/ui/`` (assets), with a
strict Content-Security-Policy on every console response (``app.py``). The pages talk to
the REST API under /api/v1 with the session cookie of ``POST /api/v1/session``; what each
page shows: docs/console.md."""
