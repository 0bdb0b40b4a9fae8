"""The Python Endpoint Picker: an Envoy ext_proc server that picks a model-server endpoint per request."""
