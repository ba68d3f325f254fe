"""Core maths and checks, free of I/O and of the network: fields, forward diffusion, grids, label-safe
warping, quality figures, registration pairs, intensity normalisation, range checks and the user error."""
