#!/usr/bin/env python
"""Train dlogit on a handful of machines reached over SSH.

The first host runs the Dask scheduler, every other host runs workers (repeat the
first host to put workers there too).  Each host needs the same Python environment
with dlogit installed (and dask-cuda for --gpu), and the data path must be readable
on every worker host (shared file system or identical copies).

    python cluster/ssh/ssh_cluster.py gpu-head,gpu-01,gpu-02 /shared/train.parquet \
        --label y --gpu --solver lbfgs --out model.npz

    python cluster/ssh/ssh_cluster.py HOSTS DATA --dry-run   # print the plan, connect nowhere

SSH itself goes through asyncssh (`pip install asyncssh`), which reads ~/.ssh/config
keys and known_hosts like OpenSSH; host keys are checked (no known_hosts=None here).

This machine talks to the scheduler only: the fit's driver runs on a worker and the
workers exchange the steps among themselves over Dask's own connections (dlogit opens
no port). With --tunnel it reaches the scheduler through a port forwarded over the SSH
connection to the first host, so nothing of the cluster need be reachable from here
(a laptop outside the hosts' network); otherwise the scheduler port of the first host
must be. The scheduler and dashboard ports are opened on the scheduler host: keep them
on a private network, or configure TLS in the dask config of every host
(distributed.comm.tls.*) and pass --tls with the client's --tls-* files.
"""

from __future__ import annotations

import argparse
import json
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("hosts", help="comma-separated host names; the first runs the scheduler")
    p.add_argument("data", help="training data (.csv/.parquet with --label, .npy with --labels)")
    p.add_argument("--label", help="label column (.csv/.parquet)")
    p.add_argument("--labels", help="labels file (.npy)")
    p.add_argument("--chunk-rows", type=int, default=None)
    p.add_argument("--solver", choices=["gd", "lbfgs"], default="lbfgs")
    p.add_argument("--l2", type=float, default=1e-4)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--out", default="model.npz", help="model file written on this machine")
    p.add_argument("--gpu", action="store_true", help="dask_cuda.CUDAWorker: one worker per GPU")
    p.add_argument("--rmm-pool-size", default=None, help="RMM pool per GPU worker, e.g. 30GB")
    p.add_argument("--nthreads", type=int, default=1, help="threads per worker")
    p.add_argument("--n-workers", type=int, default=1, help="worker processes per host (CPU)")
    p.add_argument("--remote-python", default=None, help="python on the hosts (default: python)")
    p.add_argument("--ssh-user", default=None)
    p.add_argument("--ssh-key", default=None, help="private key file")
    p.add_argument("--scheduler-port", type=int, default=8786)
    p.add_argument("--dashboard-address", default=":8787")
    p.add_argument("--tls", action="store_true", help="speak tls:// (hosts configured via dask config)")
    p.add_argument("--tls-ca-file")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--tunnel", action="store_true",
                   help="reach the scheduler through a port forwarded over SSH to the first host")
    p.add_argument("--dry-run", action="store_true", help="print the cluster plan as JSON and exit")
    args = p.parse_args(argv)
    args.hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    if len(args.hosts) < 2:
        p.error("need at least two hosts: the scheduler's, then one or more for workers")
    return args


def cluster_kwargs(args) -> dict:
    """Keyword arguments for distributed.SSHCluster (plain data: printable with --dry-run)."""
    connect_options = {}
    if args.ssh_user:
        connect_options["username"] = args.ssh_user
    if args.ssh_key:
        connect_options["client_keys"] = [args.ssh_key]
    scheduler_options = {
        "port": args.scheduler_port,
        "dashboard_address": args.dashboard_address,
        "preload": ["dlogit.dashboard"],
    }
    if args.tls:
        scheduler_options["protocol"] = "tls"
    worker_options: dict = {"nthreads": args.nthreads, "preload": ["dlogit.worker"]}
    if args.gpu:
        worker_class = "dask_cuda.CUDAWorker"
        if args.rmm_pool_size:
            worker_options["rmm_pool_size"] = args.rmm_pool_size
    else:
        worker_class = "distributed.Nanny"
        worker_options["n_workers"] = args.n_workers
    return {
        "hosts": args.hosts,
        "connect_options": connect_options,
        "scheduler_options": scheduler_options,
        "worker_options": worker_options,
        "worker_class": worker_class,
        "remote_python": args.remote_python,
    }


def tunnelled_cluster(kwargs: dict, security=None):
    """What ``distributed.SSHCluster(**kwargs)`` starts, but this machine reaches the scheduler
    through a local port forwarded over the SSH connection to the first host (the workers use the
    scheduler's own address)."""
    from distributed.deploy.spec import SpecCluster
    from distributed.deploy.ssh import Scheduler, Worker

    class TunnelledScheduler(Scheduler):
        async def start(self):
            await super().start()  # the scheduler runs; self.address is its own address
            proto, rest = self.address.split("://", 1)
            host, port = rest.rsplit(":", 1)
            self.tunnel = await self.connection.forward_local_port("127.0.0.1", 0, host.strip("[]"),
                                                                   int(port))
            self.external_address = f"{proto}://127.0.0.1:{self.tunnel.get_port()}"

    def options(host: str) -> dict:
        return {"address": host, "connect_options": kwargs["connect_options"],
                "remote_python": kwargs["remote_python"]}

    scheduler = {"cls": TunnelledScheduler,
                 "options": {**options(kwargs["hosts"][0]), "kwargs": kwargs["scheduler_options"]}}
    workers = {i: {"cls": Worker, "options": {**options(host), "kwargs": kwargs["worker_options"],
                                              "worker_class": kwargs["worker_class"]}}
               for i, host in enumerate(kwargs["hosts"][1:])}
    extra = {"security": security} if security is not None else {}
    return SpecCluster(workers, scheduler, name="SSHCluster", **extra)


def main(argv=None) -> int:
    args = parse_args(argv)
    kwargs = cluster_kwargs(args)
    if args.dry_run:
        print(json.dumps({**kwargs, "tunnel": args.tunnel}, indent=2))
        return 0

    # imported late so that --help and --dry-run work without a cluster stack
    from distributed import Client, SSHCluster

    import dlogit
    from dlogit.cluster import make_security

    security = make_security(args.tls_ca_file, args.tls_cert, args.tls_key)
    cluster_extra = {"security": security} if security is not None else {}
    cluster = tunnelled_cluster(kwargs, security) if args.tunnel else SSHCluster(**kwargs, **cluster_extra)
    with cluster, Client(cluster, security=security) as client:
        print(f"scheduler {client.scheduler.address}  dashboard {client.dashboard_link}", file=sys.stderr)
        X, y, _info = dlogit.read_data(args.data, label=args.label, labels=args.labels,
                                       chunk_rows=args.chunk_rows, client=client)
        model = dlogit.LogisticRegression(
            solver=args.solver, l2=args.l2, lr=args.lr, max_iter=args.max_iter, tol=args.tol
        ).fit(X, y, client=client)
        model.save(args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
