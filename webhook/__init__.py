"""The admission server: AdmissionReview in and out, the aiohttp app, TLS reload and its metrics."""
