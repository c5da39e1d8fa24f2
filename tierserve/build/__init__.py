"""Pure: a ModelTier -> the Serve application and the KubeRay RayService that run it."""
