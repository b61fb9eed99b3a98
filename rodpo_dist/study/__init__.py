"""The benchmark study (backbone vs alignment methods over seeds, paired statistics) and the sweep."""
