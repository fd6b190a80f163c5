"""`tf-jupyter worker` (also `python -m tf_remoting`): run the remoting runtime on this host."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from dataclasses import MISSING, fields

from tf_remoting.config import WorkerConfig

SCALARS = (str, int, float, bool)


def build_parser(prog: str = "tf-jupyter worker") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Run the tf-jupyter remoting runtime (worker): lease GPU slices, run "
        "Jupyter kernels inside them, report usage. Stop with SIGTERM; kernels keep running and are "
        "re-adopted at the next start.")
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
        elif f.name == "kernel_environments":
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


def main(argv: list[str] | None = None, prog: str = "tf-jupyter worker") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as exc:
        print(f"tf-jupyter worker: {exc}", file=sys.stderr)
        return 2
    from tf_remoting.server import serve

    try:
        asyncio.run(serve(config, address_file=args.address_file))
    except (ValueError, OSError) as exc:
        logging.getLogger("tf_remoting.worker").error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
