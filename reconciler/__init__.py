"""The reconciler: audit stored EnvoyFilters, repair drift, detect fights, hold a Lease, report."""
