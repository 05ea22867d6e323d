"""Onramp's Ray Serve application: the ingress routes and their deployment settings."""
