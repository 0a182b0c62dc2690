"""``moray kube-enforcer`` (= ``moray-kube-enforcer``): the validating admission webhook.

    moray kube-enforcer --server https://moray:7080 --token TOKEN --ca ca.pem \\
        --tls-cert webhook.pem --tls-key webhook.key --port 8443 [--config FILE]

The token needs role admission (``moray tokens create kube-enforcer admission``: verdicts
are read, decisions written to the audit log and the inventory, scans on admission
queued, and nothing else). Settings beyond these flags are in
the YAML file (docs/kube-enforcer.md lists every key). Serves ``POST /validate``,
``GET /healthz`` and ``GET /metrics`` over HTTPS until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moray import clientconfig
from moray.daemon import run_until_stopped
from moray.errors import ConfigError


def add_group(name: str, p: argparse.ArgumentParser) -> None:
    """Fill ``moray``'s ``kube-enforcer`` parser (moray.cli)."""
    p.description = __doc__.split("\n\n")[0] if __doc__ else None
    p.set_defaults(handler=run_command, daemon=True, quiet_loggers=("httpx",))
    clientconfig.add_client_options(p, server_help="moray-server's REST API URL "
                                    "($MORAY_SERVER)")
    p.add_argument("--tls-cert", type=Path, required=True, metavar="FILE",
                   help="the webhook's serving certificate (PEM; reloaded when it changes; "
                        "SIGHUP: now)")
    p.add_argument("--tls-key", type=Path, required=True, metavar="FILE",
                   help="its private key (PEM)")
    p.add_argument("--cert-from-server", action="store_true",
                   help="get the serving certificate from the server (its CA signs a key "
                        "made here, for the names of `moray server --webhook-name`), write "
                        "it to --tls-cert/--tls-key and renew it before expiry (SIGHUP: "
                        "now)")
    p.add_argument("--client-ca", type=Path, default=None, metavar="FILE",
                   help="accept only clients with a certificate from this CA (the API "
                        "server's admission client certificate; default: any client)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8443, help="HTTPS port (default 8443)")
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="YAML settings: mode, unregistered, failurePolicy, exclusions, "
                        "registries, cache times (docs/kube-enforcer.md)")
    p.add_argument("--log-level", default=argparse.SUPPRESS, help="default info")


def run_command(args: argparse.Namespace) -> int:
    from moray.controlplane.kubeenforcer import config as settings
    from moray.controlplane.kubeenforcer.app import serve

    client = clientconfig.from_args(args)
    token = client.api_token()
    if not client.server or not token:
        raise ConfigError("moray-kube-enforcer: --server and --token are required "
                          "(or $MORAY_SERVER and $MORAY_TOKEN)")
    checked = (args.client_ca,) if args.cert_from_server else (
        args.tls_cert, args.tls_key, args.client_ca)
    for path in checked:
        if path is not None and not path.is_file():
            raise ConfigError(f"{path}: no such file (--tls-cert / --tls-key / --client-ca)")
    config = settings.load(args.config, server=client.server, token=token, ca=client.ca,
                           tls_cert=args.tls_cert, tls_key=args.tls_key,
                           client_ca=args.client_ca, host=args.host,
                           cert_from_server=args.cert_from_server,
                           port=args.port)
    return run_until_stopped(serve, config)


def main(argv: list[str] | None = None) -> int:
    """``moray-kube-enforcer`` (and ``python -m moray.controlplane.kubeenforcer.main``)."""
    from moray.cli import main as moray

    return moray(argv, alias="moray-kube-enforcer")


if __name__ == "__main__":
    sys.exit(main())
