"""SLURM launchers (submitit). Filled in by the sweeps work; empty for now."""
