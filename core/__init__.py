"""The shared vocabulary of every stage: frames and rows, metrics helpers, YAML files with
line numbers, broker connection settings. Imports nothing of cityflux's own."""
