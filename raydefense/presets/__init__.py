"""YAML presets shipped with the package (`raydefense run --preset NAME`)."""
