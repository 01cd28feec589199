"""RFC 8785 (JCS) canonical JSON. (Being written: see the helper task.)"""
