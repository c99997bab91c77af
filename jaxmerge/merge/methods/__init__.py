"""One module per static merge method; each registers itself with ``jaxmerge.merge.registry``
(discovered on first use). Adding a method = one module here + its oracle test (BUILD_NOTES)."""
