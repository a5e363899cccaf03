"""hwnas: hardware-aware NAS and latency/power/energy prediction (command line and glue)."""
