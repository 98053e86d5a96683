"""The Homewatch publisher: temperature and presence from a Pi, encrypted, over MQTT/TLS."""
