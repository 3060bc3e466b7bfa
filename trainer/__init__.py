"""The trainer: validates a run config, runs a backend (sd-scripts or built-in), reports to files."""
