"""`extproc-guard demo`: the incident on one machine, and the local gateway it and the benchmarks run."""
