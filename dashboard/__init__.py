"""The Homewatch dashboard: the LAN-facing web app over the history store.

It reads the history database read-only and holds no MQTT credential and no payload
key: it imports nothing that loads them (``tests/test_layering.py`` checks it). Modules:
``settings`` (defaults < env < CLI), ``auth`` (password, sessions, login rate limit),
``app`` (routes, security headers, pages, JSON API), ``api`` (what the pages and the
API show, as JSON-ready dicts), ``metrics`` (Prometheus), ``inventory`` (certificate
expiry from certificates.json), ``server`` (HTTPS listener, health file); templates/ and
static/ (our own CSS and JS: no library, no other origin).
"""
