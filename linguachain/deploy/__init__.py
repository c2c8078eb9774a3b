"""Deployment across hosts: TLS material, SuperNode keys and a local cluster."""
