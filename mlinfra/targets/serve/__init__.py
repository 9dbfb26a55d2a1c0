"""Autoscaled serving on Ray Serve (issue 10): a stack with ``[autoscale]`` is served by Ray
Serve, which scales replicas per region on queue depth (or a custom Python policy) down to
zero and back. One package for both targets: ``local`` (a real Ray head per region, started by
``terraform_data``) and ``gcp`` (a head VM and a regional MIG of GPU workers per region).

Nothing in this package imports Ray at import time: a stack is validated, rendered and planned
without it, and only the commands that talk to a running cluster (status) start a Python that
imports it. ``section`` holds the ``[autoscale]`` table, read by ``spec``.
"""
