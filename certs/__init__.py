"""Certificates for the admission webhook: a small CA, serving certificates, renewal decisions.

Pure functions over PEM bytes (``certs.pki``); nothing here reads the clock, the environment or the network.
"""
