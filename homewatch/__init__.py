"""Homewatch: shared core of the publisher, the subscriber and the admin CLI.

Modules: ``errors`` (error hierarchy), ``url`` (broker URLs), ``config`` (settings
resolution: defaults < env < CLI), ``secrets`` (masked secrets, key rings), ``envelope``
(the encrypted payload format), ``mqtt`` (the one paho client factory), ``provision``
(identities, password and ACL files), ``cli`` (the ``homewatch`` admin command).
"""

__version__ = "0.1.0"
