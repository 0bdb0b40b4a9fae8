"""The Kubernetes side: the one API client factory, shared informers and the live Service resolver.

Every client comes from `kube.client.build_api_client`, which takes the first configuration present:
1. an explicit kubeconfig file (`--kubeconfig`; it must exist),
2. in-cluster: the pod's service account (skipped when a context is named),
3. the files in `KUBECONFIG`,
4. `~/.kube/config`.
The environment is read at call time; the `kubernetes` package's global default configuration is never
touched. `kube.informer` is the one list + watch loop, `kube.addresses` the one Service decoder.
"""
