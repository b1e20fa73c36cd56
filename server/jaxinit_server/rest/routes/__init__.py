"""One router per resource: health, registry, generate, models, kserve."""
