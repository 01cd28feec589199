"""Memory state per write scope and its hash. (Being written: see the helper task.)"""
