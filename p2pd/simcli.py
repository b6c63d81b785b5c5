"""``python -m bench.sim``: the simulator's command line, over the scenarios of sim.py and the
groups scenario of simgroups.py (kept apart so that neither module imports the other back)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from p2pd.sim import SCENARIOS, run_scenario
from p2pd.simcrash import run_mass_crash
from p2pd.simgroups import run_groups, table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sim", description="Run N real p2pd nodes on a fake clock and a modelled network.")
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30.0, help="simulated seconds of workload (after the mesh forms)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scenario", choices=SCENARIOS + ("groups",), default="steady")
    ap.add_argument("--direct-per-s", type=int, default=10, help="direct messages per simulated second")
    ap.add_argument("--broadcasts-per-s", type=int, default=1, help="broadcasts per simulated second")
    ap.add_argument("--seeds", type=int, default=3, help="mass-crash: how many nodes the others join through")
    ap.add_argument("--idle-seconds", type=float, default=10.0, help="mass-crash: the window idle frames are counted over")
    ap.add_argument("--crash-share", type=float, default=0.5, help="mass-crash: the share of nodes that crash at once [0.5]")
    ap.add_argument("--groups", type=int, default=50, help="groups: how many groups [50]")
    ap.add_argument("--group-size", type=int, nargs=2, default=(5, 40), metavar=("MIN", "MAX"),
                    help="groups: each group's size is drawn between MIN and MAX [5 40]")
    ap.add_argument("--shouts", type=int, default=200, help="groups: shouts during the --seconds of churn [200]")
    ap.add_argument("--churn", type=float, default=0.1, help="groups: the share of nodes that crash and restart [0.1]")
    ap.add_argument("--moves", type=int, default=None, help="groups: members that leave a group, and nodes that join one [--groups]")
    ap.add_argument("--idle-shouts", type=int, default=10, help="groups: shouts measured one at a time before the churn [10]")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--profile", metavar="FILE", help="write a cProfile of the run to FILE")
    args = ap.parse_args(argv)

    def run():
        logger = logging.getLogger("p2pd")
        level = logger.level
        logger.setLevel(logging.CRITICAL)  # peers lost in a partition, resends...: expected here, not news
        try:
            if args.scenario == "groups":
                return run_groups(args.nodes, args.groups, args.group_size[0], args.group_size[1], args.shouts, args.seconds,
                                  args.churn, args.moves, args.idle_shouts, args.seed, seeds=args.seeds,
                                  progress=lambda text: print(text, file=sys.stderr, flush=True))
            if args.scenario == "mass-crash":
                return run_mass_crash(args.nodes, args.seed, seeds=args.seeds, idle_s=args.idle_seconds, share=args.crash_share,
                                      progress=lambda text: print(text, file=sys.stderr, flush=True))
            return run_scenario(args.nodes, args.seconds, args.seed, args.scenario, args.direct_per_s, args.broadcasts_per_s)
        finally:
            logger.setLevel(level)

    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        report = prof.runcall(run)
        prof.dump_stats(args.profile)
    else:
        report = run()
    if args.json:
        print(json.dumps(report))
    elif args.scenario == "groups":
        print(table(report))
    else:
        for k, v in report.items():
            print(f"{k:22} {v}")
    return 0 if report["exactly_once"] else 1


def run_cli() -> None:
    """The command line (``python -m bench.sim``): with PYTHONHASHSEED fixed, so that two runs replay alike."""
    if os.environ.get("PYTHONHASHSEED") != "0":  # sets of strings iterate in hash order: fix it for a replayable digest
        os.execve(sys.executable, [sys.executable, "-m", "bench.sim", *sys.argv[1:]], {**os.environ, "PYTHONHASHSEED": "0"})
    sys.exit(main())


if __name__ == "__main__":
    run_cli()
