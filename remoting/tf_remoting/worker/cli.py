"""`tf-jupyter worker` (also `python -m tf_remoting`): run the remoting runtime on this host.

`tf-jupyter worker token new|hash` makes token-file lines instead (see `token_main`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from dataclasses import MISSING, fields

from tf_remoting.worker.config import WorkerConfig

SCALARS = (str, int, float, bool)


def build_parser(prog: str = "tf-jupyter worker") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Run the tf-jupyter remoting runtime (worker): lease GPU slices, run "
        "Jupyter kernels inside them, report usage. Stop with SIGTERM; kernels keep running and are "
        "re-adopted at the next start.",
        epilog="`%(prog)s token --help`: make tokens and the worker's token-file lines (digests).")
    parser.add_argument("--config", help="TOML file with worker settings (flags win over it)")
    parser.add_argument("--address-file", default="", help="Write the address actually served to this file "
                        "once the worker is ready (useful with port 0)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    for f in fields(WorkerConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        help_text = f.metadata.get("help", "") + (f" [default: {default}]" if default not in (None, "") else "")
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif f.type in ("int", int):
            parser.add_argument(flag, dest=f.name, type=int, default=None, help=help_text)
        elif f.type in ("float", float):
            parser.add_argument(flag, dest=f.name, type=float, default=None, help=help_text)
        elif f.type in ("str", str):
            parser.add_argument(flag, dest=f.name, default=None, help=help_text)
        elif f.type in ("list[str]", list[str]):
            parser.add_argument(flag, dest=f.name, type=lambda text: [v.strip() for v in text.split(",") if v.strip()],
                                default=None, help=help_text + " (comma-separated)")
        elif f.name in ("kernel_environments", "tenant_accounts", "quotas"):
            parser.add_argument(flag, dest=f.name, type=json.loads, default=None,
                                help=help_text + " (JSON object)")
    return parser


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    config = WorkerConfig.from_file(args.config) if args.config else WorkerConfig()
    for f in fields(WorkerConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            setattr(config, f.name, value)
    config.validate()
    return config


def build_token_parser(prog: str = "tf-jupyter worker token") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Make tokens and the lines of a worker's token file. The worker's file "
        "should hold digests (PRINCIPAL sha256:HEX), not tokens: kernels run as the worker's user and "
        "can read it. The Jupyter side keeps the token itself (c.TfVgpu.token_file).")
    sub = parser.add_subparsers(dest="action", required=True)
    new = sub.add_parser("new", help="make a random token: the token to FILE, its digest line to stdout",
                         description="Write 'PRINCIPAL TOKEN' (a new random token) to --client-file (created "
                         "mode 0600, never overwritten) for the Jupyter side, and print the worker's line "
                         "'PRINCIPAL sha256:HEX' on stdout, e.g. `| sudo tee -a /etc/tf-jupyter/tokens`.")
    new.add_argument("--principal", default="default", help="who the token stands for [default: default]")
    new.add_argument("--client-file", required=True, help="where to write the token for the Jupyter side")
    hashing = sub.add_parser("hash", help="print a token file with every token replaced by its digest",
                             description="Read a token file ('TOKEN' or 'PRINCIPAL TOKEN' lines; digest lines "
                             "and comments are kept) and print it with digests in place of the tokens.")
    hashing.add_argument("file", nargs="?", default="-", help="the token file [default: stdin]")
    return parser


def token_main(argv: list[str], prog: str = "tf-jupyter worker token") -> int:
    import os

    from tf_remoting.worker.auth import digest_line, hash_token_file, new_token

    args = build_token_parser(prog).parse_args(argv)
    try:
        if args.action == "new":
            token = new_token()
            line = digest_line(args.principal, token)
            try:
                fd = os.open(args.client_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                raise ValueError(f"{args.client_file} exists: not overwriting it") from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{args.principal} {token}\n")
            print(line)
        else:
            if args.file == "-":
                text = sys.stdin.read()
            else:
                with open(args.file) as f:
                    text = f.read()
            sys.stdout.write(hash_token_file(text))
    except (ValueError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None, prog: str = "tf-jupyter worker") -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["token"]:
        return token_main(argv[1:], prog=prog + " token")
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as exc:
        print(f"tf-jupyter worker: {exc}", file=sys.stderr)
        return 2
    from tf_remoting.worker.server import serve

    try:
        asyncio.run(serve(config, address_file=args.address_file))
    except (ValueError, OSError) as exc:
        logging.getLogger("tf_remoting.worker").error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
