"""Adapters: the admission server, Kubernetes lookups, the reconciler and the CLI."""
