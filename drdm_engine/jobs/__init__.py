"""Jobs: cases and datasets, the run folder (lock, staging, publishing), memory and disk guards, progress,
manifests, processes; one orchestrator for a single image and a dataset."""
