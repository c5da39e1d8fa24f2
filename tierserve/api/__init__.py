"""The ModelTier API (tierserve.io/v1alpha1) and the CRD generated from it."""
