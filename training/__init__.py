"""Ray Train jobs and offline (off-policy) evaluation.

Empty in this release: offline pretraining, the model registry and off-policy evaluation arrive
with their own issue. The package exists so the layout (``validation`` <- ``ray_app`` <-
``deployments``, ``training``) is in place from the start.
"""
