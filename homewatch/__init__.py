"""Homewatch: shared core of the publisher, the subscriber, the dashboard and the admin CLI.

Modules: ``errors`` (error hierarchy), ``url`` (broker URLs), ``options`` (settings
resolution: defaults < env < CLI; loads no key), ``config`` (what the MQTT programs'
settings add: broker URL, password, client certificates), ``secrets`` (masked secrets,
key rings), ``envelope`` (the encrypted payload format), ``mqtt`` (the one paho client
factory), ``provision`` (identities, password and ACL files), ``cli`` (the ``homewatch``
admin command), ``health`` (heartbeat files), ``history`` (the history store's interface).
"""

__version__ = "0.1.0"
