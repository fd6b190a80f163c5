"""The worker daemon: runs on each GPU host (`tf-jupyter worker`, `python -m tf_remoting`).

It leases slices of its devices from an atomic ledger, starts kernels inside them under a nanny
process each, relays their messages over gRPC, samples usage and enforces limits.
"""
