"""The Kubernetes side: the one API client factory, shared informers and the live Service resolver."""
