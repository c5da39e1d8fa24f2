"""The Kopf operator: reconciles each ModelTier into one Serve application and writes its status.

Depends on `tierserve.api`, `tierserve.build` and `tierserve.autoscale`; never on Ray.
"""
