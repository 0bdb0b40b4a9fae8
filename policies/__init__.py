"""The pure policy engine: EnvoyFilter model, rules, findings and JSON Patch.

Nothing in this package touches the network, the file system or the clock.
"""
