"""``python -m bench.sim``: the deterministic simulator's command line (the simulator is p2pd/sim.py)."""

from p2pd.simcli import run_cli

if __name__ == "__main__":
    run_cli()
