"""``ascend-fleet``: the plan of an inventory without Ansible, and vLLM flag checks.

ascend-fleet plan INVENTORY.yml [MORE.yml ...] [--deploy] [--json]
    Validate the inventory and print the plan table (or JSON). Exit 1 on errors.
ascend-fleet check-serve [--vllm-version 0.21.0] -- MODEL --flag value ...
    Check one ``vllm serve`` command line against vLLM's flag table. Exit 1 if refused.
"""

from __future__ import annotations

import argparse
import json
import sys

from .inventory import load_yaml_inventory
from .planview import plan_table
from .serveflags import FlagSpec, ServeFlagError, parse_serve_argv
from .topology import build_plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ascend-fleet", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="validate an inventory and show its plan")
    p.add_argument("inventory", nargs="+", help="YAML inventory files (later ones override)")
    p.add_argument("--deploy", action="store_true", help="validate for deployment (refuse placeholders)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    c = sub.add_parser("check-serve", help="check a vllm serve command line")
    c.add_argument("--vllm-version", default="0.21.0")
    c.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.cmd == "plan":
        hosts, groups = load_yaml_inventory(*args.inventory)
        plan = build_plan(hosts, groups, mode="deploy" if args.deploy else "render")
        if plan["errors"]:
            print("inventory validation failed:", *plan["errors"], sep="\n- ", file=sys.stderr)
            return 1
        print(json.dumps(plan, indent=1, sort_keys=True) if args.json else plan_table(plan))
        return 0

    serve_argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    try:
        cmd = parse_serve_argv(serve_argv, FlagSpec.load(args.vllm_version))
    except ServeFlagError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    print(f"ok: model {cmd.model}, {len(cmd.given)} flags")
    return 0


if __name__ == "__main__":
    sys.exit(main())
