"""``ascend-fleet``: bring up, operate and inspect a fleet; the plan of an inventory; vLLM flag checks.

ascend-fleet up INVENTORY [--lab] [--check] [-e NAME=VALUE ...]
    Run site.yml (with --lab: bring up the lab for that topology first and add its overlay).
ascend-fleet status|stop|restart|destroy|logs|eval INVENTORY [--lab] [-e ...]
    The operations and evaluation playbooks.
ascend-fleet lab up|down|status TOPOLOGY
    The lab (lab/labctl).
ascend-fleet inventory NODES.txt --name NAME --kind a2|a3 --layout single|pd [--prefill 16x1 --decode 2x8]
                       [--context 1m] [--nic NAME] [-o FILE]
    Write an inventory for real nodes (one 'ADDRESS [NAME]' a line), validated as site.yml
    validates it. Exit 2 on bad input, nothing written.
ascend-fleet plan INVENTORY.yml [MORE.yml ...] [--deploy] [--json]
    Validate the inventory and print the plan table (or JSON). Exit 1 on errors.
ascend-fleet check-serve [--vllm-version 0.21.0] -- MODEL --flag value ...
    Check one ``vllm serve`` command line against vLLM's flag table. Exit 1 if refused.

INVENTORY is a shipped topology name (a2-4p4d: inventories/a2-4p4d/hosts.yml) or a path.
Progress: a live table on a terminal, one line per event otherwise (or --plain), JSON lines
with --json. Every run keeps runs/<UTC time>-<verb>-<inventory>/ (report.json, report.html,
ansible-runner's artifacts). Exit code: 0 ok, 1 failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .inventory import load_yaml_inventory
from .planview import plan_table
from .serveflags import FlagSpec, ServeFlagError, parse_serve_argv
from .topology import build_plan

RUN_VERBS = {
    "up": "bring the fleet up to a verified service (site.yml)",
    "status": "containers, every rank's health, the proxy (playbooks/status.yml)",
    "stop": "stop proxy, decode, prefill (playbooks/stop.yml)",
    "restart": "rolling restart, one instance at a time (playbooks/restart.yml)",
    "destroy": "remove the containers (playbooks/destroy.yml; needs -e ops_destroy_confirm=yes)",
    "logs": "collect logs and diagnostics (playbooks/collect-logs.yml)",
    "eval": "evaluate the deployment (playbooks/eval.yml)",
}


class Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors are bad input: exit 2, no traceback
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ascend-fleet", description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    for verb, text in RUN_VERBS.items():
        r = sub.add_parser(verb, help=text, description=text)
        r.add_argument("inventory", help="shipped topology name (a2-4p4d) or inventory path")
        if verb == "up":
            r.add_argument(
                "--lab",
                action="store_true",
                help="bring up the lab for this topology first (lab/labctl up) and run against it",
            )
        else:
            r.add_argument("--lab", action="store_true", help="run against this topology's lab (must be up)")
        r.add_argument("--check", action="store_true", help="Ansible check mode: change nothing")
        r.add_argument(
            "-e",
            "--extra-vars",
            dest="extra_vars",
            action="append",
            default=[],
            metavar="VARS",
            help="passed to ansible-playbook -e (NAME=VALUE, JSON, @FILE); repeatable",
        )
        r.add_argument(
            "-i",
            "--inventory",
            dest="more",
            action="append",
            default=[],
            metavar="FILE",
            help="a further inventory file (overrides), repeatable",
        )
        shown = r.add_mutually_exclusive_group()
        shown.add_argument("--plain", action="store_true", help="one line per event, no live table")
        shown.add_argument("--json", action="store_true", help="one JSON object per event line, then a summary")
        r.add_argument("--runs-dir", type=Path, help="where run records go (default: runs/ in the project)")
    lab = sub.add_parser("lab", help="the lab: a simulated Atlas cluster (lab/labctl)")
    lab.add_argument("action", choices=["up", "down", "status"])
    lab.add_argument("topology", help="shipped topology name")
    g = sub.add_parser("inventory", help="write an inventory for real nodes from their addresses and a layout")
    g.add_argument("nodes", help="file with one node a line: ADDRESS [NAME] ('-' reads standard input)")
    g.add_argument("--name", required=True, help="the topology's name (fleet_topology), e.g. a2-16p2d")
    g.add_argument("--kind", required=True, help="a2 (Atlas 800 A2, 8 NPUs) or a3 (Atlas 800 A3, 16 NPUs)")
    g.add_argument("--layout", required=True, help="single (one node) or pd (prefill/decode)")
    g.add_argument("--prefill", help="pd: prefill INSTANCESxNODES, e.g. 16x1")
    g.add_argument("--decode", help="pd: decode INSTANCESxNODES, e.g. 2x8")
    g.add_argument("--context", default="default", help="default, or 1m (the ultra-long-context profiles)")
    g.add_argument("--nic", default="enp67s0f0np0", help="the NIC that carries the node addresses (fleet_nic_name)")
    g.add_argument("-o", "--output", type=Path, help="write here (default: print)")
    p = sub.add_parser("plan", help="validate an inventory and show its plan")
    p.add_argument("inventory", nargs="+", help="YAML inventory files (later ones override)")
    p.add_argument("--deploy", action="store_true", help="validate for deployment (refuse placeholders)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    c = sub.add_parser("check-serve", help="check a vllm serve command line")
    c.add_argument("--vllm-version", default="0.21.0")
    c.add_argument("argv", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    if args.cmd in RUN_VERBS:
        from .runplay import Job, execute, project_root
        from .runprogress import make_output

        output = make_output("json" if args.json else "plain" if args.plain else "auto")
        job = Job(
            verb=args.cmd,
            inventory=args.inventory,
            root=project_root(),
            output=output,
            lab=args.lab,
            lab_up=args.cmd == "up" and args.lab,
            check=args.check,
            extra_vars=args.extra_vars,
            more_inventories=args.more,
            runs_dir=args.runs_dir,
        )
        return execute(job)

    if args.cmd == "lab":
        from .runplay import BadInput, labctl_path, project_root, run_labctl, shipped_names

        root = project_root()
        try:
            labctl_path(root)
            if args.topology not in shipped_names(root):
                raise BadInput(f"unknown topology {args.topology!r} (one of: {', '.join(shipped_names(root))})")
        except BadInput as exc:
            print(f"ascend-fleet: {exc}", file=sys.stderr)
            return 2
        return 0 if run_labctl(root, [args.action, args.topology]) == 0 else 1

    if args.cmd == "inventory":
        return write_inventory(args, argv)

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


def write_inventory(args: argparse.Namespace, argv: list[str] | None) -> int:
    from . import inventory_gen as gen

    try:
        if args.nodes == "-":
            text, source = sys.stdin.read(), "stdin"
        else:
            try:
                text, source = Path(args.nodes).read_text(encoding="utf-8"), args.nodes
            except (OSError, UnicodeDecodeError) as exc:
                raise gen.InventoryInputError(f"{args.nodes}: cannot read the nodes file ({exc})") from None
        inventory = gen.generate(gen.parse_nodes(text, source), name=args.name, kind=args.kind, layout=args.layout,
                                 prefill=args.prefill, decode=args.decode, nic=args.nic, context=args.context)
        plan = gen.validate(inventory, mode="deploy")
    except gen.InventoryInputError as exc:
        print(f"ascend-fleet inventory: {exc}", file=sys.stderr)
        return 2
    words = ["ascend-fleet", *(sys.argv[1:] if argv is None else argv)]
    command = "".join(ch if ch.isprintable() else "?" for ch in shlex.join(words))  # one comment line
    text = gen.render(inventory, plan, command)
    if args.output:
        gen.write(args.output, text)
        print(f"wrote {args.output}: {len(plan['instances'])} instance(s) on {len(plan['hosts'])} node(s); "
              f"next: ascend-fleet plan --deploy {args.output}")
    else:
        sys.stdout.write(text)
    for warning in plan["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
