"""``homewatch``: the admin command run on the server.

    homewatch device add NAME       provision an identity (password, key ring, broker files)
    homewatch device list           list identities
    homewatch device remove NAME --force

The broker re-reads its password and ACL files on SIGHUP; ``add`` and ``remove`` say so.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from homewatch import provision
from homewatch.config import OneLineParser
from homewatch.errors import HomewatchError
from homewatch.url import DEFAULT_BASE


def _parser() -> OneLineParser:
    parser = OneLineParser(prog="homewatch", description="Homewatch administration.")
    parser.add_argument("--certs", type=Path,
                        default=Path(os.environ.get("HOMEWATCH_CERTS_DIR", "certs")),
                        help="certs directory [env HOMEWATCH_CERTS_DIR, default certs]")
    parser.add_argument("--base", default=os.environ.get("HOMEWATCH_BASE", DEFAULT_BASE),
                        help="base topic used in the ACL [env HOMEWATCH_BASE, default home]")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    device = sub.add_parser("device", help="manage identities (devices and the subscriber)")
    dsub = device.add_subparsers(dest="action", required=True, parser_class=OneLineParser)
    add = dsub.add_parser("add", help="provision a device (or the 'subscriber' identity)")
    add.add_argument("name")
    add.add_argument("--force", action="store_true",
                     help="replace an existing identity's password and key")
    dsub.add_parser("list", help="list identities")
    rm = dsub.add_parser("remove", help="remove an identity and delete its material")
    rm.add_argument("name")
    rm.add_argument("--force", action="store_true", help="required: removal is destructive")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    layout = provision.Layout(args.certs)
    out = sys.stdout
    try:
        if args.action == "add":
            made = provision.add_identity(layout, args.name, base=args.base, force=args.force)
            out.write(f"provisioned {made.name}\n  password: {made.password_file}\n")
            if made.key_file is not None:
                out.write(f"  key ring: {made.key_file}\n")
            out.write("the broker picks this up on reload (SIGHUP)\n")
        elif args.action == "list":
            for name in provision.list_identities(layout):
                role = "subscriber" if name == provision.SUBSCRIBER else "device"
                out.write(f"{name}\t{role}\n")
        elif args.action == "remove":
            if not args.force:
                sys.stderr.write(f"homewatch: error: removing {args.name!r} deletes its "
                                 "credentials and keys; add --force to confirm\n")
                return 2
            provision.remove_identity(layout, args.name, base=args.base)
            out.write(f"removed {args.name}; the broker refuses it after reload (SIGHUP)\n")
    except HomewatchError as exc:
        sys.stderr.write(f"homewatch: error: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"homewatch: error: {exc.filename}: {exc.strerror}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
