"""Warping a case with DRDM fields: an image's fields on its working grid, one slab loop over the input grid
(images, labels, quality figures and the written field in one pass), and arrays in memory for pipelines."""
