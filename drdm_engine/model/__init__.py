"""The recovery network and what runs it: the published RecResACNet, the fast CPU layers (``cpu/``), the
sampler, precision choices, checkpoints and the registry of bundled models."""
