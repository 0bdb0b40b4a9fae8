"""`extproc-guard`: the entry point, its commands and the offline I/O of `check` and `fix`."""
