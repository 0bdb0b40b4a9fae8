"""`extproc-guard certs`: create or renew the webhook's CA and serving certificate; publish the caBundle.

Idempotent: a run with nothing to renew writes nothing. The state lives in a directory (`--out-dir`), in
Secrets (`--secret`), or both; with `--secret` the Secrets are the source of truth and the directory a copy.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from certs.rotation import CertRequest, Rotation
    from cli.cabundle import SecretNames

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 2
PROG = "extproc-guard certs"


class CertsUsageError(Exception):
    """Arguments that parse but do not make sense together."""


@dataclass(frozen=True, slots=True)
class CertsOptions:
    """Everything one run needs, built once from the command line."""

    request: CertRequest
    out_dir: Path | None
    secrets: SecretNames | None
    kubeconfig: Path | None
    print_ca_bundle: bool
    patch_webhooks: tuple[str, ...]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "certs",
        help="create or renew the webhook CA and serving certificate; print or patch the caBundle",
        description=(
            "Create a CA and a serving certificate for SERVICE.NAMESPACE.svc, reuse them while they are "
            "valid, renew before expiry, and publish the CA as the caBundle of webhook configurations."
        ),
    )
    parser.add_argument("--service", required=True, metavar="NAME", help="the webhook's Service name")
    parser.add_argument("--namespace", required=True, metavar="NS", help="the Service's namespace")
    parser.add_argument(
        "--out-dir", type=Path, metavar="DIR", help="write ca.crt, ca.key, tls.crt, tls.key here"
    )
    parser.add_argument(
        "--secret", metavar="NAME", help="keep the serving certificate in this kubernetes.io/tls Secret"
    )
    parser.add_argument("--ca-secret", metavar="NAME", help="keep the CA in this Secret (default: SECRET-ca)")
    parser.add_argument("--ip", action="append", default=[], metavar="ADDRESS", help="an IP SAN (repeatable)")
    parser.add_argument(
        "--dns-name", action="append", default=[], metavar="NAME", help="an extra DNS SAN (repeatable)"
    )
    parser.add_argument("--cluster-domain", default="cluster.local", help="default: %(default)s")
    parser.add_argument("--valid-days", type=_positive_int, default=365, help="default: %(default)s")
    parser.add_argument("--renew-before-days", type=_positive_int, default=30, help="default: %(default)s")
    parser.add_argument("--ca-valid-days", type=_positive_int, default=3650, help="default: %(default)s")
    parser.add_argument("--print-ca-bundle", action="store_true", help="print the base64 caBundle on stdout")
    parser.add_argument(
        "--patch-webhooks",
        type=_name_list,
        default=[],
        metavar="NAME[,NAME]",
        help="set the caBundle of every webhook in these Mutating/ValidatingWebhookConfigurations",
    )
    parser.add_argument("--kubeconfig", type=Path, help="default: in-cluster, then the usual kubeconfig")
    parser.set_defaults(handler=run_certs)


def run_certs(args: argparse.Namespace) -> int:
    # cryptography and the Kubernetes client load here, not when the CLI lists its commands.
    from certs.pki import PkiError
    from cli.cabundle import CaBundleError

    try:
        options = build_options(args)
        message = apply_certs(options, now=datetime.now(UTC))
    except BrokenPipeError:
        raise
    except (CertsUsageError, PkiError, CaBundleError, OSError) as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    print(f"{PROG}: {message}", file=sys.stderr)
    return EXIT_OK


def build_options(args: argparse.Namespace) -> CertsOptions:
    from certs.pki import service_dns_names
    from certs.rotation import CertRequest

    if args.out_dir is None and args.secret is None:
        raise CertsUsageError("give --out-dir DIR or --secret NAME (or both): the certificates need a home")
    if args.renew_before_days >= args.valid_days:
        raise CertsUsageError("--renew-before-days must be smaller than --valid-days")
    if args.renew_before_days >= args.ca_valid_days:
        raise CertsUsageError("--renew-before-days must be smaller than --ca-valid-days")
    if args.ca_secret is not None and args.secret is None:
        raise CertsUsageError("--ca-secret needs --secret")
    dns_names = service_dns_names(args.service, args.namespace, cluster_domain=args.cluster_domain)
    dns_names += [name for name in args.dns_name if name not in dns_names]
    request = CertRequest(
        dns_names=tuple(dns_names),
        ip_addresses=tuple(dict.fromkeys(args.ip)),
        valid_for=timedelta(days=args.valid_days),
        renew_before=timedelta(days=args.renew_before_days),
        ca_valid_for=timedelta(days=args.ca_valid_days),
        ca_common_name=f"extproc-guard CA for {args.service}.{args.namespace}",
    )
    secrets = None
    if args.secret is not None:
        from cli.cabundle import SecretNames

        secrets = SecretNames(
            namespace=args.namespace, serving=args.secret, ca=args.ca_secret or f"{args.secret}-ca"
        )
    return CertsOptions(
        request=request,
        out_dir=args.out_dir,
        secrets=secrets,
        kubeconfig=args.kubeconfig,
        print_ca_bundle=args.print_ca_bundle,
        patch_webhooks=tuple(args.patch_webhooks),
    )


def apply_certs(options: CertsOptions, *, now: datetime) -> str:
    """Rotate what needs it, store the result, publish the bundle; return a one-line summary."""
    from certs.files import read_cert_dir, write_cert_dir
    from certs.rotation import StoredCerts, rotate_certs
    from cli.cabundle import (
        build_api_client,
        encode_ca_bundle,
        patch_webhook_ca_bundles,
        read_secrets,
        write_ca_secret,
        write_serving_secret,
    )

    api = build_api_client(options.kubeconfig) if options.secrets or options.patch_webhooks else None
    found = read_secrets(api, options.secrets) if api is not None and options.secrets is not None else None
    if found is not None:
        stored = found.certs
    elif options.out_dir is not None:
        stored = read_cert_dir(options.out_dir)
    else:
        stored = StoredCerts()
    rotation = rotate_certs(stored, request=options.request, now=now)
    result = rotation.certs.as_stored()
    written: list[str] = []
    patched: list[str] = []
    if api is not None and options.secrets is not None and found is not None:
        if write_ca_secret(api, options.secrets, result, version=found.ca_version):
            written.append(f"secret/{options.secrets.ca}")
        # Clients must trust a new CA before a certificate it signed is served.
        patched = patch_webhook_ca_bundles(api, options.patch_webhooks, rotation.certs.ca_bundle)
        if write_serving_secret(api, options.secrets, result, version=found.serving_version):
            written.append(f"secret/{options.secrets.serving}")
    if options.out_dir is not None:
        written += [str(options.out_dir / name) for name in write_cert_dir(options.out_dir, result)]
    if api is not None and options.secrets is None:
        patched = patch_webhook_ca_bundles(api, options.patch_webhooks, rotation.certs.ca_bundle)
    if options.print_ca_bundle:
        print(encode_ca_bundle(rotation.certs.ca_bundle))
    return _summarize(rotation, written=written, patched=patched)


def _summarize(rotation: Rotation, *, written: list[str], patched: list[str]) -> str:
    ca = f"CA created ({rotation.ca_reason})" if rotation.ca_reason else "CA reused"
    serving = (
        f"serving certificate issued ({rotation.serving_reason})"
        if rotation.serving_reason
        else "serving certificate kept"
    )
    parts = [ca, serving, "wrote " + (", ".join(written) if written else "nothing")]
    if patched:
        parts.append("patched caBundle of " + ", ".join(patched))
    return "; ".join(parts)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _name_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected NAME[,NAME]")
    return names


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
