"""Deployment wiring. The deployments themselves are declared in prefect.yaml at the repository root."""
