"""What the services share for observing themselves: a cheap batched log output and latency tallies.

Standard library only; the EPP, the admission server and the reconciler use it.
"""
