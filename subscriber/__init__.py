"""The Homewatch subscriber: verifies, decrypts and shows every device's readings."""
